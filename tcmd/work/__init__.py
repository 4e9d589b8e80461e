"""Parallel work: the job queue, the dispatcher, distribution, worktrees, retention."""
