"""CORS as vLLM sets it up: by default any origin may call the API from a browser (preflights answered
before the API-key check); --allowed-origins narrows it."""
from __future__ import annotations

import pytest

from engine.serve import build_parser
from server_harness import API_KEY, ServerThread, engine_config, http_client

PREFLIGHT = {"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization, content-type"}


@pytest.fixture(scope="module")
def servers():
    config = engine_config("preset:tiny-qwen3", num_kv_blocks=32)
    with ServerThread(config, api_key=API_KEY) as default, \
            ServerThread(config, allowed_origins=("https://ui.example",), allow_credentials=True) as narrow:
        yield default, narrow


def test_any_origin_by_default_even_with_an_api_key(servers):
    default, _ = servers
    with http_client(default) as http:
        preflight = http.options("/v1/chat/completions", headers=PREFLIGHT)
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "*"
        assert "POST" in preflight.headers["access-control-allow-methods"]
        models = http.get("/v1/models", headers={"Origin": "http://localhost:3000",
                                                 "Authorization": f"Bearer {API_KEY}"})
        assert models.status_code == 200 and models.headers["access-control-allow-origin"] == "*"
        assert http.get("/v1/models", headers={"Origin": "http://localhost:3000"}).status_code == 401


def test_allowed_origins_narrow_it(servers):
    _, narrow = servers
    with http_client(narrow) as http:
        assert http.options("/v1/completions", headers=PREFLIGHT).status_code == 400
        ok = http.options("/v1/completions", headers=PREFLIGHT | {"Origin": "https://ui.example"})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://ui.example"
        assert ok.headers["access-control-allow-credentials"] == "true"


def test_cors_flags_parse_json_lists():
    args = build_parser().parse_args(["m", "--allowed-origins", '["https://a", "https://b"]', "--allow-credentials"])
    assert args.allowed_origins == ["https://a", "https://b"] and args.allow_credentials
    assert build_parser().parse_args(["m"]).allowed_methods == ["*"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["m", "--allowed-headers", '"x"'])
