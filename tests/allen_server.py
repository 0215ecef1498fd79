"""A local stand-in for the Allen API and IBL's mirror, on 127.0.0.1 (the tests have no internet).

It answers the two requests the fetcher makes, in the documented formats:

* ``/api/v2/data/query.json?criteria=model::SectionDataSet,...genes[acronym$eq'<gene>']``: a JSON
  object ``{"success": true, "id": 0, "start_row": 0, "num_rows": n, "total_rows": n, "msg": [...]}``
  whose SectionDataSet records are built from the real records Allen ships inside each grid zip
  (``data_set.xml``: id, failed, qc_date, reference_space_id, section_thickness, specimen_id, ...)
  plus the gene and plane, as the query includes them;
* ``/grid_data/download/<id>?include=energy``: the shipped Allen zips, with HTTP ``Range``;
* ``/atlas/gene-expression.pqt`` and ``.bin``: a whole-set pair in iblatlas's format.

Faults on demand: a connection dropped half-way through a file (once), a damaged zip, a 404,
a gene with no experiment (an empty ``msg``), an answer that is not what the API documents.
"""

from __future__ import annotations

import json
import re
import threading
import xml.etree.ElementTree as ET
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

from napari_spatial_nmf.datasets import DATA

GRIDS = {"Pdyn": (71717084, DATA / "Pdyn_P56_coronal_71717084_200um.zip"),
         "Nrp1": (74272479, DATA / "Nrp1_P56_coronal_74272479_200um.zip")}


def section_data_set(zip_path, gene: str, plane: str = "coronal") -> dict:
    """A SectionDataSet record as the API's JSON gives it, from the zip's own data_set.xml."""
    with zipfile.ZipFile(zip_path) as zf:
        root = ET.fromstring(zf.read("data_set.xml"))
    rec = {}
    for child in root:
        if len(child):  # nested records (products, specimen, section images): not in the plain query
            continue
        text = None if child.get("nil") == "true" else child.text
        value = {"true": True, "false": False}.get(text, text)
        if isinstance(value, str) and re.fullmatch(r"-?\d+", value):
            value = int(value)
        elif isinstance(value, str) and re.fullmatch(r"-?\d+\.\d+", value):
            value = float(value)
        rec[child.tag.replace("-", "_")] = value
    rec["plane_of_section_id"] = 1 if plane == "coronal" else 2
    rec["genes"] = [{"acronym": gene}]
    return rec


class AllenStandIn:
    """The server; ``url`` is its address. Configure ``experiments`` ({gene: [records]}),
    ``files`` ({path: bytes}), ``drop_once`` (paths whose first request is cut half-way),
    ``broken_answer`` (genes whose query gets a malformed answer)."""

    def __init__(self):
        self.experiments: dict[str, list[dict]] = {g: [section_data_set(p, g)] for g, (_, p) in GRIDS.items()}
        self.files: dict[str, bytes] = {f"/grid_data/download/{i}": p.read_bytes() for i, p in GRIDS.values()}
        self.drop_once: set[str] = set()
        self.broken_answer: set[str] = set()
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                parts = urlsplit(self.path)
                outer.requests.append((parts.path, self.headers.get("Range")))
                if parts.path == "/api/v2/data/query.json":
                    return self._query(unquote(parse_qs(parts.query).get("criteria", [""])[0]))
                body = outer.files.get(parts.path)
                if body is None:
                    return self._send(404, b"Not Found", "text/plain")
                start = 0
                m = re.match(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if m:
                    start = int(m.group(1))
                    if start >= len(body):
                        return self._send(416, b"", "text/plain")
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if parts.path in outer.drop_once:  # the connection drops half-way, once
                    outer.drop_once.discard(parts.path)
                    self.wfile.write(body[start:start + (len(body) - start) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return None
                self.wfile.write(body[start:])
                return None

            def _query(self, criteria):
                gene = re.search(r"genes\[acronym\$eq'([^']+)'\]", criteria)
                plane = re.search(r"plane_of_section\[name\$eq'([^']+)'\]", criteria)
                gene = gene.group(1) if gene else ""
                if gene in outer.broken_answer:
                    return self._send(200, b'{"oops": "not the documented answer"}', "application/json")
                rows = [r for r in outer.experiments.get(gene, [])
                        if plane is None or r["plane_of_section_id"] == (1 if plane.group(1) == "coronal" else 2)]
                payload = {"success": True, "id": 0, "start_row": 0, "num_rows": len(rows), "total_rows": len(rows),
                           "msg": rows}
                return self._send(200, json.dumps(payload).encode(), "application/json")

            def _send(self, code, body, ctype):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
