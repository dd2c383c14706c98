"""Looking at a run from the local store: plots, an HTML report, tables for scripts, a live view.

``history`` reads a run (only the asked metrics); ``plot`` draws them (matplotlib, optional);
``report`` writes one self-contained page; ``summary`` is what ``show``/``list`` print, as text
or JSON; ``export`` writes CSV/Parquet; ``watch`` follows a running run (rich, optional).
"""
