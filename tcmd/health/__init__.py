"""Health: the sweep, its verdicts and recovery, the error patterns, the health tool."""
