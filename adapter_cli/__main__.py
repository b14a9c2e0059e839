from adapter_cli.cli import main

main()
