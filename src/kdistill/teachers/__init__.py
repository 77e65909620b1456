"""Teachers: where the teacher's knowledge comes from (online model, cached store)."""

DEFAULT_MAX_NEW_TOKENS = 128  # generation length when nothing says otherwise (the one default)
