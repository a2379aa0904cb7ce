"""The JSON log line: one object, the record's extras kept, uvicorn's coloured copy dropped."""

from __future__ import annotations

import json
import logging

from service.logs import JsonFormatter


def test_a_json_line_keeps_extras_and_drops_the_coloured_copy_of_the_message() -> None:
    record = logging.makeLogRecord(
        {"name": "uvicorn.error", "levelname": "INFO", "msg": "Started server process [%d]", "args": (7,)}
    )
    record.color_message = "Started server process [\x1b[36m%d\x1b[0m]"  # as uvicorn adds it
    record.study = "tiny"
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "Started server process [7]"
    assert line["study"] == "tiny"
    assert "color_message" not in line
