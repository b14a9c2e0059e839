"""Built-in YAML recipes, shipped inside the package as ``adapter_cli.recipes`` (data only)."""
