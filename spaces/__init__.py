"""Search spaces as data, one translator per engine (the search issue fills this in)."""
