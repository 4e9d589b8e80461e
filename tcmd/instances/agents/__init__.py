"""Agent profiles: how each agent CLI is launched, fed and watched."""
