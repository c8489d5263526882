"""The `ddpm-ext` command line: [`cli`] dispatches to one module per sub-command (`sample`, `figures`, `evaluate`)."""
