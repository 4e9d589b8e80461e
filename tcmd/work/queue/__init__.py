"""The job queue: the JobQueue protocol and its local (heap + store) implementation."""
