"""fake_claude's package: a stdlib-only stand-in for the `claude` CLI, for tests in tmux.

tests/fakes/fake_claude.py is the script tcmd launches; it only imports ``cli.main``, so
that what follows is imported (and its bytecode cached) rather than compiled on every
start. One session is one ``FakeClaude`` object, built up in layers, one concern each,
each module adding to the class below it:

    flags     command-line flags, settings/MCP JSON, UsageError (no session yet)
    state     Session: every field of the session, set from the flags and environment
    screen    Screen(Session): the transcript lines, spinner and input box, redrawn
    tasks     Runtime(Screen): Tasks (threads that wait), timers, the exit status
    hooks     Hooks(Runtime): runs the `--settings` hook commands for an event
    turns     Turns(Hooks): the `@directive`s of a prompt acted out as a turn
    keys      Keys(Turns): raw input, bracketed paste, Enter/Escape/Ctrl-C, the dialog
    app       FakeClaude(Keys): the main thread's select loop, start-up and shutdown
    cli       main(): validates the flags and the session id, then runs a FakeClaude

Nothing here imports asyncio, typing or pathlib at run time: tests start hundreds of
these, and each of those imports costs milliseconds.
"""
