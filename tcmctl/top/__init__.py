"""``tcmctl top``: the live operator's view (Textual). Imported only by the ``top`` command.

feed.py (the event stream and the snapshots, no Textual), panels.py (the text of the
small panels), dialogs.py (confirmation and input), app.py (the screen and its keys).
"""
