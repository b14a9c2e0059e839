"""Training adapters, heads or whole models on a task: recipes, the loop, checkpoints and resume."""
