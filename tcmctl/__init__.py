"""tcmctl: thin clients of tcmd (CLI, MCP shim, hook command). Imports nothing heavy."""
