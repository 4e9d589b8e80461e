"""The daemon itself: lifecycle, the socket server, its own tools, systemd notify."""
