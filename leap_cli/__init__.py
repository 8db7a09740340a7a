"""leap: LLM-generated egocentric action programs (LEAP) for EPIC-KITCHENS-100."""

__version__ = "0.1.0"
