"""Tokens and cost: each agent's usage read from its transcript, kept per scope, reported.

    transcript   Claude Code's transcript format: assistant messages' usage, read on from
                 a byte offset, one count per message however many lines it takes
    ledger       accounts per instance in the store; totals per run, manager, tree, daemon
    tools        the ``usage`` tool

Prices live in the ground (``tcmd/prices.py``: Settings check TCM_PRICES at start);
budgets in ``tcmd/work/budget.py``, which stops runs by what the ledger says.
"""
