"""Teachers: where the teacher's knowledge comes from (online model, cached store)."""
