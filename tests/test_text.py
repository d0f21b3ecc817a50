import gzip
import json

import numpy as np
import pytest

from dsquant.artifact import read_output
from dsquant.cli import main
from dsquant.data import DataError, detect_format, load_dataset, read_text_records
from dsquant.pipeline import compress

from conftest import shared

ALPACA = [
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5", "source": "a"},
    {"instruction": "Name a colour.", "input": "", "output": "Blue", "source": "b"},
    {"instruction": "Translate to French.", "input": "cat", "output": "chat", "source": "a"},
    {"instruction": "Write a haiku about rain.", "input": "", "output": "Soft rain on the roof", "source": "b"},
    {"instruction": "What is 10 times 4?", "input": "", "output": "40", "source": "a"},
    {"instruction": "Summarise: the sky is blue.", "input": "", "output": "Blue sky.", "source": "b"},
]


def _write(path, records, gz=False, array=False):
    text = json.dumps(records, ensure_ascii=False) if array else "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("array", [False, True])
def test_read_alpaca_json_and_jsonl(tmp_path, gz, array):
    path = _write(tmp_path / ("d.json" if array else "d.jsonl") if not gz else tmp_path / ("d.json.gz" if array else "d.jsonl.gz"), ALPACA, gz, array)
    assert detect_format(path) == "text"
    ds = read_text_records(path)
    assert ds.schema == "alpaca" and len(ds) == 6
    # DQ's text: instruction + input (when not empty) + output
    assert ds.texts[0] == "Add the numbers. 2 and 3 5" and ds.texts[1] == "Name a colour. Blue"
    assert ds.records == ALPACA


def test_other_schemas_template_and_groups(tmp_path):
    dolly = [{"instruction": "Q?", "context": "", "response": "A", "category": "qa"}, {"instruction": "Q2", "context": "ctx", "response": "B", "category": "open"}]
    ds = read_text_records(_write(tmp_path / "d.jsonl", dolly), group_by="category")
    assert ds.schema == "dolly" and ds.texts == ["Q? A", "Q2 ctx B"]
    assert ds.classes == ["open", "qa"] and ds.labels.tolist() == [1, 0]
    pc = read_text_records(_write(tmp_path / "p.jsonl", [{"prompt": "Hi", "completion": "there"}]))
    assert pc.schema == "prompt/completion" and pc.texts == ["Hi there"]
    t = read_text_records(tmp_path / "d.jsonl", template="[{category}] {instruction}")
    assert t.texts == ["[qa] Q?", "[open] Q2"]
    with pytest.raises(DataError, match="record 1 has no field 'nope'"):
        read_text_records(tmp_path / "d.jsonl", template="{nope}")


def test_malformed_line_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ALPACA[0]) + "\n" + json.dumps(ALPACA[1]) + "\n{not json\n")
    with pytest.raises(DataError, match=r"bad.jsonl: line 3: invalid JSON"):
        read_text_records(path)
    path.write_text(json.dumps(ALPACA[0]) + "\n[1, 2]\n")
    with pytest.raises(DataError, match="line 2: expected a JSON object"):
        read_text_records(path)
    path.write_text(json.dumps({"foo": 1}) + "\n")
    with pytest.raises(DataError, match="expected alpaca"):
        read_text_records(path)
    path.write_text("")
    with pytest.raises(DataError, match="empty"):
        read_text_records(path)


def test_real_instruction_files_and_banking77():
    ds = load_dataset(shared("text", "instructions.jsonl.gz"))
    assert len(ds) == 14358 and ds.schema == "alpaca"
    assert set(ds.records[0]) == {"instruction", "input", "output", "source", "license"}
    b = load_dataset(shared("text", "banking77_train.jsonl"), group_by="label")
    assert len(b) == 10003 and len(b.classes) == 77 and b.schema == "text"


def test_sentence_encoder_offline():
    from dsquant.embed.text import SentenceEncoder, resolve_model

    path, how = resolve_model("all-MiniLM-L6-v2")
    assert "offline" in how
    enc = SentenceEncoder()
    e = enc.encode_texts(["a cat sat on the mat", "a kitten sat on the rug", "stock prices fell sharply"])
    assert e.shape == (3, 384) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    # paraphrases are closer than unrelated sentences
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2
    # --max-tokens truncates: a text is embedded as its first 8 tokens, a short text is unchanged
    short = SentenceEncoder(max_seq_length=8)
    words = "the quick brown fox jumps over the lazy dog"
    long_e, head_e, short_e = short.encode_texts([words + " and then runs far away into the forest", words, "a cat"])
    assert np.allclose(long_e, head_e, atol=1e-5) and not np.allclose(long_e, enc.encode_texts([words + " and then runs far away into the forest"])[0], atol=1e-3)
    assert np.allclose(short_e, enc.encode_texts(["a cat"])[0], atol=1e-5)
    assert short.config()["max_seq_length"] == 8 != enc.config()["max_seq_length"]


def test_compress_text_cli_writes_subset_records_unchanged(tmp_path, capsys):
    records = ALPACA * 5  # 30 records
    for i, r in enumerate(records):
        records[i] = {**r, "id": i}
    src = _write(tmp_path / "data.jsonl.gz", records, gz=True)
    out = tmp_path / "o"
    code = main(["compress", str(src), "--ratio", "0.2", "--bins", "3", "--out", str(out), "--group-by", "source", "--quiet"])
    assert code == 0
    res = read_output(out)
    assert len(res.indices) == 6 and res.manifest["dataset"]["kind"] == "text"
    lines = (out / "subset.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [records[i] for i in res.indices]
    raw = gzip.decompress(src.read_bytes()).decode().splitlines()
    assert lines == [raw[i] for i in res.indices]  # byte for byte
    # grouped by source: each group gives its share
    groups = np.array([r["source"] for r in records])
    assert sorted(np.unique(groups[res.indices], return_counts=True)[1].tolist()) == [3, 3]


def test_adq_on_text_uses_embedding_scores(tmp_path):
    src = _write(tmp_path / "d.jsonl", [{**r, "id": i} for i, r in enumerate(ALPACA * 4)])
    res = compress(src, method="adq", ratio=0.25, n_bins=3)
    assert len(res.indices) == 6
    assert "embedding" in res.manifest["adq"]["representativeness"]
    assert "no views" in res.manifest["adq"]["diversity"]


def test_text_embedding_store_resumes_and_matches_the_encoder(tmp_path):
    """The embedding store serves text: `dsquant embed RECORDS --encoder sentence` writes shards
    whose rows are the sentence encoder's own embeddings, resumable like image stores."""
    from dsquant.cli import main
    from dsquant.embed import SentenceEncoder
    from dsquant.embed.store import open_store

    records = [{"instruction": f"Task {i}: {w}", "input": "", "output": w * (i % 3 + 1)} for i, w in enumerate(["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"])]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    out = tmp_path / "store"
    assert main(["embed", str(path), "--encoder", "sentence", "--out", str(out), "--shard-size", "4", "--dtype", "float32", "--quiet"]) == 0
    (out / "shard-00001.json").unlink()
    assert main(["embed", str(path), "--encoder", "sentence", "--out", str(out), "--shard-size", "4", "--dtype", "float32", "--quiet"]) == 0
    st = open_store(out)
    want = SentenceEncoder().encode(read_text_records(path)).features
    assert st.features.shape == (10, 384) and np.allclose(np.asarray(st.features), want, atol=1e-5)
    assert st.ids.tolist() == [str(i) for i in range(10)]
