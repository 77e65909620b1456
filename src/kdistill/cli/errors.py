"""How the command line shows failures: one error line, no library noise, no broken bar."""

from __future__ import annotations

import contextlib
import os
import sys


def cli_exception(exc: BaseException, name: str) -> bool:
    """``exc`` is click's (or typer's vendored copy of click's) exception class ``name``.

    typer >= 0.29 raises its own copies of click's exceptions, older typer raises click's;
    both are recognised by class name and home package, so neither version needs a pin."""
    return any(
        c.__name__ == name and c.__module__.split(".")[0] in ("click", "typer")
        for c in type(exc).__mro__
    )


def quiet_third_party() -> None:
    """Silence library warnings and info logs so that an error line is not lost among them
    (kdistill's own progress bars and training bars stay)."""
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # weight-loading bars (transformers reads this when imported; training bars stay)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", module=r"(?!kdistill)")


def close_progress_bars() -> None:
    """End any progress bar a failure interrupted, so the error starts on its own line."""
    tqdm_mod = sys.modules.get("tqdm")
    if tqdm_mod is None:
        return
    for bar in list(getattr(tqdm_mod.tqdm, "_instances", ())):
        with contextlib.suppress(Exception):
            bar.close()


def error_line(text: str) -> int:
    close_progress_bars()
    line = text.strip().splitlines()[0] if text.strip() else "unknown error"
    sys.stderr.write(f"kdistill: error: {line}\n")
    sys.stderr.flush()
    return 2
