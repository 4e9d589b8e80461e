"""Agents in tmux: the registry, prompt delivery, role rules, their tools, agent profiles."""
