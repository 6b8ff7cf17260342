"""A knowledge-tool HTTP server on loopback, built from ``compositional_celebrities.json``.

One lookup per relation — a person's birth country, birth year or birth date; a country's
capital, latitude, currency and so on; the Nobel laureate in Literature of a year; the US
president on a date — each an endpoint ``GET /<relation>?<key>=<value>`` answering
``{"result": value}`` (404 with an error for unknown keys), and each described to the agents
in LLM-VM's tool format. The multi-hop questions of the data set are then answerable with two
lookups, which is what the agents are scored on.
"""

from __future__ import annotations

import json
import threading
import unicodedata
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from llmvm_ray.protocol import ToolSpec

# The data set ships with the repository (data/agents/, as in LLM-VM); ``--data`` overrides.
DATA_DIR = Path(__file__).resolve().parents[3] / "data" / "agents"
DEFAULT_DATA = DATA_DIR / "compositional_celebrities.json"

# relation -> (key parameter, key description, tool description)
PERSON_RELATIONS: dict[str, tuple[str, str]] = {
    "birth_country": ("person", "Find the country where a person was born."),
    "birth_year": ("person", "Find the year a person was born."),
    "birth_date": ("person", "Find the full date a person was born."),
}
COUNTRY_RELATIONS: dict[str, str] = {
    "capital": "Find the capital of a country.",
    "rounded_lat": "Find the latitude of a country, rounded down.",
    "rounded_lng": "Find the longitude of a country, rounded down.",
    "ccn3": "Find the ISO 3166-1 numeric code of a country.",
    "currency_short": "Find the currency abbreviation of a country.",
    "currency_symbol": "Find the currency symbol of a country.",
    "jpn_common_name": "Find the Japanese name of a country.",
    "spa_common_name": "Find the Spanish name of a country.",
    "est_common_name": "Find the Estonian name of a country.",
    "urd_common_name": "Find the Urdu name of a country.",
}
OTHER_RELATIONS: dict[str, tuple[str, str]] = {
    "nobel_literature": ("year", "Find who won the Nobel Prize in Literature in a year."),
    "us_president": ("date", "Find who was President of the United States on a date."),
}
KEY_DESCRIPTIONS = {
    "person": "the person's full name",
    "country": "the country's name",
    "year": "the year, four digits",
    "date": "the date, like January 5, 1950",
}


def relations() -> list[tuple[str, str, str]]:
    """(relation, key parameter, description) in tool order (tool ids are 1-based)."""
    out = [(r, key, desc) for r, (key, desc) in PERSON_RELATIONS.items()]
    out += [(r, "country", desc) for r, desc in COUNTRY_RELATIONS.items()]
    out += [(r, key, desc) for r, (key, desc) in OTHER_RELATIONS.items()]
    return out


def norm(text: str) -> str:
    text = unicodedata.normalize("NFKC", str(text)).casefold()
    return " ".join(text.replace(",", " ").split())


@dataclass(frozen=True)
class Question:
    """One multi-hop question with its two hops (the data set's row)."""

    question: str
    answers: tuple[str, ...]
    category: str
    person: str
    q1: str
    a1: str  # the first hop's answer as the lookup tool returns it
    q2: str
    a2: str
    tool1: str  # relation of the first hop
    tool2: str  # relation of the second hop
    key1: str
    key2: str


class KnowledgeBase:
    """The lookup tables: relation -> normalized key -> value."""

    def __init__(self, tables: dict[str, dict[str, str]], questions: list[Question]) -> None:
        self.tables = tables
        self.questions = questions

    def lookup(self, relation: str, key: str) -> str | None:
        return self.tables.get(relation, {}).get(norm(key))

    @classmethod
    def load(cls, path: str | Path = DEFAULT_DATA) -> KnowledgeBase:
        rows = json.loads(Path(path).read_text())["data"]
        tables: dict[str, dict[str, str]] = {r: {} for r, _, _ in relations()}
        questions: list[Question] = []
        for row in rows:
            category = row["category"]
            person = row["person"]
            a2 = str(row["A2"][0])
            if category.startswith("birthplace_"):
                tool2, key2 = category.removeprefix("birthplace_"), "country"
                a1 = row["birth_country"]
                # The data set's own spelling of the country (A1) is an alias of the key.
                for alias in row["A1"]:
                    tables[tool2].setdefault(norm(alias), a2)
                tool1 = "birth_country"
            elif category in _DATED_HOPS:
                tool1, tool2, key2 = _DATED_HOPS[category]
                a1 = str(row["A1"][0])
            else:
                continue
            tables[tool1][norm(person)] = a1
            tables[tool2][norm(a1)] = a2
            questions.append(
                Question(
                    row["Question"],
                    _aliases(row["Answer"]),
                    category,
                    person,
                    row["Q1"],
                    a1,
                    row["Q2"],
                    a2,
                    tool1,
                    tool2,
                    "person",
                    key2,
                )
            )
        return cls(tables, questions)


_DATED_HOPS = {
    # category: (first-hop relation, second-hop relation, second-hop key kind)
    "birthyear_nobelLiterature": ("birth_year", "nobel_literature", "year"),
    "birthdate_uspresident": ("birth_date", "us_president", "date"),
}


def _aliases(values: list[Any]) -> tuple[str, ...]:
    return tuple(str(v) for v in values)


def is_heldout(person: str, buckets: int = 5) -> bool:
    """People held out from step-model training (one in ``buckets``, stable by name)."""
    return zlib.crc32(person.encode()) % buckets == 0


def split_questions(questions: list[Question], heldout: bool) -> Iterator[Question]:
    return (q for q in questions if is_heldout(q.person) == heldout)


def tool_specs(base_url: str) -> list[ToolSpec]:
    """The server's lookups in LLM-VM's tool format, in tool-id order."""
    base = base_url.rstrip("/")
    return [
        ToolSpec(
            description=desc,
            url=f"{base}/{relation}",
            method="GET",
            dynamic_params={key: KEY_DESCRIPTIONS[key]},
        )
        for relation, key, desc in relations()
    ]


def tool_index(relation: str) -> int:
    """1-based tool id of ``relation`` in ``tool_specs``."""
    return [r for r, _, _ in relations()].index(relation) + 1


class _Handler(BaseHTTPRequestHandler):
    kb: KnowledgeBase
    keys: dict[str, str]

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        parts = urlsplit(self.path)
        relation = parts.path.strip("/")
        if relation not in self.keys:
            return self._send(404, {"error": f"no such relation: {relation}"})
        key_name = self.keys[relation]
        values = parse_qs(parts.query).get(key_name)
        if not values:
            return self._send(400, {"error": f"missing query parameter '{key_name}'"})
        value = self.kb.lookup(relation, values[0])
        if value is None:
            return self._send(404, {"error": f"unknown {key_name}: {values[0]}"})
        return self._send(200, {"result": value})

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return


class KnowledgeServer:
    """The lookups served on ``127.0.0.1`` in a background thread (a context manager)."""

    def __init__(self, kb: KnowledgeBase, port: int = 0) -> None:
        handler = type(
            "KnowledgeHandler",
            (_Handler,),
            {"kb": kb, "keys": {r: key for r, key, _ in relations()}},
        )
        self._server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def tools(self) -> list[ToolSpec]:
        return tool_specs(self.url)

    def start(self) -> KnowledgeServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> KnowledgeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
