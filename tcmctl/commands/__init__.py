"""tcmctl's click commands, one module per group of commands."""
