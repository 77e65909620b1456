"""The report card: results JSON (+ run logs) -> self-contained HTML and Markdown.

Reads files only; imports no torch or model code.
"""

from kdistill.report.render import render_report

__all__ = ["render_report"]
