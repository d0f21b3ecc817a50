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
    # float32 compute: with bf16 (the auto choice on CPUs with AVX512-BF16 or AMX) a row depends
    # on the batch it was padded with, at 1e-4
    flags = ["--encoder", "sentence", "--out", str(out), "--shard-size", "4", "--dtype", "float32", "--precision", "float32", "--quiet"]
    assert main(["embed", str(path), *flags]) == 0
    (out / "shard-00001.json").unlink()
    assert main(["embed", str(path), *flags]) == 0
    st = open_store(out)
    want = SentenceEncoder(precision="float32").encode(read_text_records(path)).features
    assert st.features.shape == (10, 384) and np.allclose(np.asarray(st.features), want, atol=1e-5)
    assert st.ids.tolist() == [str(i) for i in range(10)]


@pytest.fixture(scope="module")
def tiny_sentence_model(tmp_path_factory):
    """A tiny random BERT saved in float16 with its tokenizer (sentence-transformers adds mean
    pooling): a checkpoint stored in half precision, as many on the hub are."""
    pytest.importorskip("sentence_transformers")
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path = tmp_path_factory.mktemp("tiny-bert16")
    words = "the a cat dog sat on mat rug kitten stock prices fell sharply quick brown fox jumps over lazy and then runs far away into forest".split()
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words) + "\n")
    BertTokenizerFast(vocab_file=str(path / "vocab.txt")).save_pretrained(path)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=5 + len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).half().save_pretrained(path)
    return path


def test_token_batching_and_precision_of_the_sentence_encoder(tiny_sentence_model):
    """Batches by token length give each text the embedding sentence-transformers' own order
    gives it; a float16 checkpoint computes in float32 unless told otherwise (transformers 5
    loads it in float16 by default: 2-6x slower on most CPUs); bf16 rows are unit in float32."""
    from dsquant.embed.text import SentenceEncoder

    texts = ["the cat sat on the mat", "a dog", "the quick brown fox jumps over the lazy dog and then runs far away into the forest",
             "stock prices fell sharply", "cat", "the kitten sat on the rug and the dog sat on the mat"] * 3
    # float32 named: "auto" is bf16 on CPUs with AVX512-BF16 or AMX (checked below)
    tok = SentenceEncoder(str(tiny_sentence_model), batch_size=4, sort="tokens", device="cpu", precision="float32")
    chars = SentenceEncoder(str(tiny_sentence_model), batch_size=4, sort="chars", device="cpu", precision="float32")
    assert tok.token_lengths(["a dog", "cat", texts[2]]).tolist() == [4, 3, 19]  # [CLS] ... [SEP] around 2, 1 and 17 words
    a, b = tok.encode_texts(texts), chars.encode_texts(texts)
    assert next(tok.load(False).parameters()).dtype.is_floating_point and str(next(tok.load(False).parameters()).dtype) == "torch.float32"
    assert np.abs(a - b).max() < 1e-5 and np.allclose(a[:6], a[6:12], atol=1e-6) and np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-6)
    assert tok.config() == chars.config() and "dtype" not in tok.config()  # float32: the key of earlier caches
    from dsquant.embed.pretrained import cpu_has_fast_bf16

    auto = SentenceEncoder(str(tiny_sentence_model), device="cpu")
    assert auto.dtype == ("bfloat16" if cpu_has_fast_bf16() else "float32")
    bf = SentenceEncoder(str(tiny_sentence_model), batch_size=4, precision="bfloat16", device="cpu")
    c = bf.encode_texts(texts)
    assert bf.config()["dtype"] == "bfloat16" and str(next(bf.load(False).parameters()).dtype) == "torch.bfloat16"
    assert np.abs(np.linalg.norm(c, axis=1) - 1).max() < 1e-6 and np.sum(a * c, axis=1).min() > 0.98
    # default batches: 16 texts of equal token length on the CPU (measured fastest), 128 in
    # sentence-transformers' own order
    assert SentenceEncoder(device="cpu").batch_size == 16 and SentenceEncoder(device="cpu", sort="chars").batch_size == 128
    with pytest.raises(ValueError, match="sort: expected 'auto', 'tokens' or 'chars'"):
        SentenceEncoder(sort="length")
    with pytest.raises(ValueError, match="batch_size: expected an integer >= 1, got 0"):
        SentenceEncoder(batch_size=0)
    with pytest.raises(ValueError, match="precision: expected one of"):
        SentenceEncoder(precision="int8")


def test_static_encoder_distils_model2vec_style_and_caches(tiny_sentence_model, tmp_path, monkeypatch):
    """Row i of the static table is the model's mean output over [SEP, i, CLS], rotated by PCA
    and scaled by its SIF weight: undoing the weights gives the Gram matrix of the centred naive
    vectors (PCA with every component is a rotation). A text is the normalised mean of its
    tokens' rows. The table is distilled once, then read from the cache; a model2vec folder is
    used as it is; --text-model static routes to this encoder."""
    import torch
    from safetensors.numpy import save_file

    from dsquant.embed import StaticEncoder, make_encoder
    from dsquant.embed.static import distill_static
    from dsquant.embed.text import SentenceEncoder

    monkeypatch.setenv("DSQUANT_CACHE", str(tmp_path / "cache"))
    st = SentenceEncoder(str(tiny_sentence_model), precision="float32", device="cpu").load(False)
    vectors, tok = distill_static(st)
    size, hidden = len(st.tokenizer.get_vocab()), st[0].auto_model.config.hidden_size
    assert vectors.shape == (size, min(hidden, size)) and vectors.dtype == np.float32
    cls, sep = st.tokenizer.cls_token_id, st.tokenizer.sep_token_id
    with torch.inference_mode():
        ids = torch.tensor([[sep, i, cls] for i in range(size)])
        naive = st[0].auto_model(input_ids=ids, attention_mask=torch.ones_like(ids), token_type_ids=torch.zeros_like(ids)).last_hidden_state.mean(1).numpy()
    zipf = 1 / np.arange(2, size + 2)
    unscaled = vectors / (1e-4 / (1e-4 + zipf / zipf.sum()))[:, None]
    centred = naive - naive.mean(0)  # PCA with every component: centring and a rotation, so Gram matrices agree
    assert np.allclose(unscaled @ unscaled.T, centred @ centred.T, atol=1e-4)

    import dsquant.cache

    digests = []
    real_digest = dsquant.cache.file_digest
    monkeypatch.setattr(dsquant.cache, "file_digest", lambda path: digests.append(path) or real_digest(path))
    enc = StaticEncoder(f"static:{tiny_sentence_model}")
    texts = ["the cat sat on the mat", "a dog", "stock prices fell sharply"]
    got = enc.encode_texts(texts)
    hashed = len(digests)
    assert hashed >= 1 and enc.config() == enc.config() and len(digests) == hashed  # the weights hashed once
    assert enc.info == {"distilled": True, "distill_seconds": enc.info["distill_seconds"]}
    for text, row in zip(texts, got):
        want = vectors[st.tokenizer(text, add_special_tokens=False)["input_ids"]].mean(0)
        assert np.allclose(row, want / np.linalg.norm(want), atol=1e-5)
    again = StaticEncoder(f"static:{tiny_sentence_model}")
    assert np.array_equal(again.encode_texts(texts), got) and again.info == {"distilled": False}

    m2v = tmp_path / "m2v"
    m2v.mkdir()
    save_file({"embeddings": vectors[:, :4].copy()}, str(m2v / "model.safetensors"))
    (m2v / "tokenizer.json").write_text(tok)
    (m2v / "config.json").write_text(json.dumps({"model_type": "model2vec", "normalize": True}))
    small = StaticEncoder(f"static:{m2v}").encode_texts(texts)
    want = vectors[st.tokenizer("a dog", add_special_tokens=False)["input_ids"], :4].mean(0)
    assert small.shape == (3, 4) and np.allclose(small[1], want / np.linalg.norm(want), atol=1e-6)
    assert isinstance(make_encoder(None, "text", model="static"), StaticEncoder) and isinstance(make_encoder(None, "text", model="all-MiniLM-L6-v2"), SentenceEncoder)


def test_emulated_half_precision_is_noticed_once(monkeypatch, caplog):
    """bf16/fp16 asked for on a CPU without native bf16 runs, with one notice per process that
    it is emulated and slower; auto picks float32 there and says nothing."""
    import logging

    import torch

    from dsquant.embed import pretrained

    monkeypatch.setattr(pretrained, "cpu_has_fast_bf16", lambda: False)
    pretrained._slow_half_notice.cache_clear()
    cpu = torch.device("cpu")
    with caplog.at_level(logging.WARNING, logger="dsquant"):
        assert pretrained.resolve_precision("auto", cpu) == "float32" and not caplog.records
        assert [pretrained.resolve_precision("bfloat16", cpu) for _ in range(3)] == ["bfloat16"] * 3
    assert len(caplog.records) == 1 and "bfloat16 on this CPU" in caplog.records[0].getMessage() and "emulated" in caplog.records[0].getMessage()
    monkeypatch.setattr(pretrained, "cpu_has_fast_bf16", lambda: True)
    caplog.clear()
    pretrained._slow_half_notice.cache_clear()
    assert pretrained.resolve_precision("auto", cpu) == "bfloat16" and pretrained.resolve_precision("bfloat16", cpu) == "bfloat16" and not caplog.records


def test_static_table_follows_the_runs_cache_dir(tiny_sentence_model, tmp_path, monkeypatch):
    """compress(cache_dir=D) caches the distilled table under D (not the default cache), and
    use_cache=False distils without writing anything."""
    from dsquant.embed import make_encoder

    monkeypatch.setenv("DSQUANT_CACHE", str(tmp_path / "default"))
    data = tmp_path / "a.jsonl"
    _write(data, ALPACA * 3)
    res = compress(str(data), ratio=0.5, n_bins=2, text_model=f"static:{tiny_sentence_model}", cache_dir=tmp_path / "run-cache")
    assert len(res.indices) == 9 and len(list((tmp_path / "run-cache" / "static").glob("*.npz"))) == 1
    assert not (tmp_path / "default" / "static").exists()
    enc = make_encoder(None, "text", model=f"static:{tiny_sentence_model}", cache_dir=False)
    enc.encode_texts(["a cat"])
    assert enc.info["distilled"] and not (tmp_path / "default" / "static").exists()
