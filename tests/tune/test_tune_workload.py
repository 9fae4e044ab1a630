"""Workloads: the tenant's own texts (JSONL or plain text, Chinese included) or a synthetic mix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tei_manager.tune.workload import LengthDistribution, WorkloadError, load, synthetic

ZH = ["向量检索需要把文本转换成稠密向量。", "今天上海的天气很好，适合出去散步。", "模型服务的吞吐量取决于批处理大小。"]


def test_embed_jsonl_with_chinese_text(tmp_path: Path) -> None:
    sample = tmp_path / "traffic.jsonl"
    sample.write_text("\n".join(json.dumps({"text": t, "user": "x"}, ensure_ascii=False) for t in ZH) + "\n\n",
                      encoding="utf-8")
    w = load(sample, "embed")
    assert w.kind == "embed" and w.texts == tuple(ZH) and w.path == "/embed"
    body, n = w.body(0, batch=2)
    assert n == 2
    sent = json.loads(body)
    assert sent == {"inputs": ZH[:2], "truncate": True}
    # The request carries the characters themselves (UTF-8), not \\u escapes.
    assert "向量".encode() in body
    assert w.describe()["inputs"] == 3


def test_rerank_jsonl_keeps_documents_per_query(tmp_path: Path) -> None:
    sample = tmp_path / "rerank.jsonl"
    rows = [{"query": "天气", "documents": ZH}, {"query": "throughput", "documents": ["batch size", "latency"]}]
    sample.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    w = load(sample, "rerank")
    assert w.documents_per_query == 3 and w.path == "/rerank"
    body, n = w.body(1, batch=99)  # the batch does not apply: a query goes with its own documents
    assert n == 2 and json.loads(body) == {"query": "throughput", "texts": ["batch size", "latency"], "truncate": True}


def test_plain_text_one_input_per_line(tmp_path: Path) -> None:
    sample = tmp_path / "sample.txt"
    sample.write_text("first line\n\nsecond line\n" + "\n".join(ZH) + "\n", encoding="utf-8")
    assert load(sample, "embed").texts == ("first line", "second line", *ZH)
    rerank = load(sample, "rerank", documents_per_query=2)
    assert [(i.query, len(i.documents)) for i in rerank.rerank] == [("first line", 2), (ZH[1], 1)]


@pytest.mark.parametrize(
    ("content", "kind", "message"),
    [
        ('{"text": "ok"}\n{"txt": "typo"}\n', "embed", r":2: expected a non-empty \"text\" string"),
        ('{"text": "ok"}\nnot json\n', "embed", r":2: not JSON"),
        ('{"query": "q", "documents": []}\n', "rerank", r":1: expected \"query\""),
        ('["a list"]\n', "embed", r":1: expected a JSON object"),
        ("\n\n", "embed", "holds no inputs"),
    ],
)
def test_bad_samples_say_where_and_how_to_fix(tmp_path: Path, content: str, kind: str, message: str) -> None:
    sample = tmp_path / "bad.jsonl"
    sample.write_text(content)
    with pytest.raises(WorkloadError, match=message) as err:
        load(sample, kind)  # type: ignore[arg-type]
    assert str(sample) in str(err.value) or "holds no inputs" in str(err.value)


def test_missing_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(WorkloadError, match="no such file"):
        load(tmp_path / "absent.jsonl", "embed")
    binary = tmp_path / "blob.txt"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(WorkloadError, match="not UTF-8"):
        load(binary, "embed")


def test_synthetic_is_deterministic_and_mixes_languages() -> None:
    a = synthetic("embed", n=50, languages=("en", "zh"), seed=7)
    b = synthetic("embed", n=50, languages=("en", "zh"), seed=7)
    assert a.texts == b.texts
    assert a.texts != synthetic("embed", n=50, languages=("en", "zh"), seed=8).texts
    assert any("。" in t for t in a.texts) and any(t.endswith(".") for t in a.texts)
    lengths = [len(t.split()) for t in a.texts[::2]]  # the English half
    assert min(lengths) >= 1 and max(lengths) <= LengthDistribution().maximum

    r = synthetic("rerank", n=10, documents_per_query=5, seed=1)
    assert len(r) == 10 and r.documents_per_query == 5
    with pytest.raises(WorkloadError, match="unknown language"):
        synthetic("embed", languages=("fr",))


def test_sampling_is_seeded() -> None:
    w = synthetic("embed", n=100, seed=0)
    assert w.sample(20, seed=3).texts == w.sample(20, seed=3).texts
    assert w.sample(20, seed=3).texts != w.sample(20, seed=4).texts
    assert len(w.sample(500, seed=0)) == 500
