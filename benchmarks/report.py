"""What every benchmark script ends with: the numbers printed as JSON and, with --json, written to a file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def emit(report: dict[str, Any], json_path: str | None) -> None:
    report["load_average_at_end"] = os.getloadavg()
    text = json.dumps(report, indent=2)
    print(text)
    if json_path:
        Path(json_path).write_text(text + "\n", encoding="utf-8")
