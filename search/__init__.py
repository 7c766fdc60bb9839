"""Search engines over the 3D-UNet: ``Search`` is the library entry point (see search/api.py)."""

from search.api import BestTrial, Search, SearchResult
from search.spec import SearchError, SearchSpec

__all__ = ["BestTrial", "Search", "SearchError", "SearchResult", "SearchSpec"]
