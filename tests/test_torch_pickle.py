"""The torch-free checkpoint reader against files written by real torch (see
tests/reference/make_torch_files.py), plus hand-made broken and malicious archives."""

import collections
import copyreg
import os
import pathlib
import subprocess
import sys
import textwrap
import tracemalloc
import zipfile

import ml_dtypes
import numpy as np
import pytest

from sonar_jax.convert.torch_pickle import (CheckpointFormatError, LazyTensor, UnknownGlobal,
                                            UnsafeCheckpointError, iter_tensors, open_checkpoint)

FILES = pathlib.Path(__file__).parent / "fixtures" / "torch_files"
REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def expected():
    with np.load(FILES / "expected.npz") as npz:
        return dict(npz)


# ---------------------------------------------------------------- helpers for crafted files

def write_archive(path, pkl: bytes, storages=None, *, prefix="archive", byteorder="little"):
    """A zip laid out like torch.save's, with whatever pickle and storages a test wants."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{prefix}/data.pkl", pkl)
        if byteorder:
            z.writestr(f"{prefix}/byteorder", byteorder)
        for key, data in (storages or {}).items():
            z.writestr(f"{prefix}/data/{key}", data)
        z.writestr(f"{prefix}/version", "3\n")
    return path


def ints(values) -> str:
    return "(" + "".join(f"I{v}\n" for v in values) + "t"


def tensor_pickle(size, stride, *, offset=0, numel=None, storage="FloatStorage", key="0") -> bytes:
    """{'w': _rebuild_tensor_v2(<storage id>, offset, size, stride, False, OrderedDict())},
    written as protocol-0 pickle text (plus BINPERSID) so tests can splice in other opcodes."""
    numel = numel if numel is not None else offset + int(np.prod(size))
    return (f"(dS'w'\nctorch._utils\n_rebuild_tensor_v2\n("
            f"(S'storage'\nctorch\n{storage}\nS'{key}'\nS'cpu'\nI{numel}\ntQ"
            f"I{offset}\n{ints(size)}{ints(stride)}I00\nccollections\nOrderedDict\n)RtRs.").encode()


def rewrite(src, dst, *, drop=(), replace=None, compression=zipfile.ZIP_STORED):
    """Copies a zip member by member, dropping or replacing some."""
    replace = replace or {}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression) as zout:
        for info in zin.infolist():
            if not any(info.filename.endswith(d) for d in drop):
                zout.writestr(info.filename, replace.get(info.filename, zin.read(info)))
    return dst


# ---------------------------------------------------------------- reading real torch files

@pytest.mark.parametrize("name", ["basic", "params", "module_state", "fairseq_like"])
def test_values_match_torch(name, expected):
    with open_checkpoint(FILES / f"{name}.pt", skip_unknown=name == "fairseq_like") as ckpt:
        tensors = dict(iter_tensors(ckpt.root))
        want = {k.split("/", 1)[1]: v for k, v in expected.items() if k.startswith(name + "/")}
        assert sorted(tensors) == sorted(want)
        for key, lazy in tensors.items():
            value = lazy.load()
            assert value.shape == lazy.shape == want[key].shape, key
            assert value.dtype == lazy.dtype and value.nbytes == lazy.nbytes, key
            assert value.flags.c_contiguous and value.flags.owndata and value.flags.writeable
            np.testing.assert_array_equal(value.astype(want[key].dtype), want[key], err_msg=key)


def test_dtypes_map_to_numpy():
    with open_checkpoint(FILES / "basic.pt") as ckpt:
        dtypes = {k: t.dtype for k, t in iter_tensors(ckpt.root)}
    assert dtypes["f32"] == np.float32 and dtypes["f16"] == np.float16
    assert dtypes["bf16"] == ml_dtypes.bfloat16 and dtypes["f64"] == np.float64
    assert dtypes["i64"] == np.int64 and dtypes["i32"] == np.int32
    assert dtypes["i16"] == np.int16 and dtypes["i8"] == np.int8 and dtypes["u8"] == np.uint8
    assert dtypes["bool"] == np.bool_ and dtypes["u16"] == np.uint16
    assert dtypes["f8"] == ml_dtypes.float8_e4m3fn


def test_views_share_storage_with_offsets_and_strides():
    with open_checkpoint(FILES / "basic.pt") as ckpt:
        r = ckpt.root
        assert len({r[k].key for k in ("base", "base_t", "base_slice", "base_row")}) == 1
        assert (r["base_t"].shape, r["base_t"].stride) == ((6, 4), (1, 6))
        assert (r["base_slice"].offset, r["base_slice"].stride) == (8, (6, 1))
        assert r["base_row"].offset == 18 and r["expanded"].stride == (0, 1)
        np.testing.assert_array_equal(r["base_t"].load(), np.arange(24.0).reshape(4, 6).T)


def test_metadata_needs_no_storage_reads(monkeypatch):
    from sonar_jax.convert import torch_pickle

    def no_reads(*args):
        raise AssertionError("storage bytes were read")
    monkeypatch.setattr(torch_pickle._Archive, "read", no_reads)
    monkeypatch.setattr(torch_pickle._Archive, "_read_fully", no_reads)
    with open_checkpoint(FILES / "basic.pt") as ckpt:
        t = ckpt.root["bf16"]
        assert isinstance(t, LazyTensor)
        assert (t.shape, t.dtype, t.nbytes) == ((3, 3), np.dtype(ml_dtypes.bfloat16), 18)


def test_parameters_and_plain_values():
    with open_checkpoint(FILES / "params.pt") as ckpt:
        assert ckpt.root["step"] == 7
        assert set(ckpt.root["model"]) == {"enc.weight", "enc.bias", "dec.weight"}
        assert all(isinstance(v, LazyTensor) for v in ckpt.root["model"].values())
        extras = ckpt.root["extras"]
        assert isinstance(extras["tagged"], LazyTensor) and extras["tagged"].dtype == np.int32
        assert extras["device"] == "cuda:0" and extras["size"] == (2, 3)
        assert extras["bytes"] == b"\x00\xffabc" and extras["set"] == {1, 2}
        assert extras["complex"] == 1 + 2j and extras["counter"] == {"a": 2, "b": 1}


def test_module_state_dict_is_an_ordered_dict():
    with open_checkpoint(FILES / "module_state.pt") as ckpt:
        root = ckpt.root
        assert type(root) is collections.OrderedDict
        assert list(root)[:3] == ["0.weight", "0.bias", "1.weight"]
        assert root._metadata["2"] == {"version": 2}  # set by a BUILD on the OrderedDict
        assert root["2.num_batches_tracked"].load() == 0


def test_iter_tensors_dotted_keys():
    with open_checkpoint(FILES / "fairseq_like.pt", skip_unknown=True) as ckpt:
        keys = [k for k, _ in iter_tensors(ckpt.root)]
        assert "last_optimizer_state.state.0.exp_avg" in keys and "model.weight" in keys
        assert [k for k, _ in iter_tensors(ckpt.root["model"], "m")] == ["m.weight", "m.bias"]


def test_strict_mode_refuses_config_objects():
    path = FILES / "fairseq_like.pt"
    with pytest.raises(UnsafeCheckpointError, match="argparse.Namespace") as err:
        open_checkpoint(path)
    assert str(path) in str(err.value) and "skip_unknown=True" in str(err.value)


def test_skip_unknown_turns_config_objects_into_placeholders():
    with open_checkpoint(FILES / "fairseq_like.pt", skip_unknown=True) as ckpt:
        args, cfg = ckpt.root["args"], ckpt.root["cfg"]
        assert isinstance(args, UnknownGlobal) and args.qualname == "argparse.Namespace"
        assert args.state == {"arch": "toy", "lr": [0.001], "layers": 2, "fp16": True}
        assert cfg.qualname == "omegaconf.dictconfig.DictConfig" and cfg.state is not None
        assert isinstance(ckpt.root["extra_state"]["best_loss"], UnknownGlobal)  # np.float64
        groups = ckpt.root["last_optimizer_state"]["param_groups"]
        assert groups[0]["lr"] == 1e-3 and groups[0]["betas"] == (0.9, 0.999)
        assert ckpt.root["optimizer_history"][0]["num_updates"] == 1


def test_big_endian_storages_are_swapped(tmp_path):
    src = FILES / "basic.pt"
    with open_checkpoint(src) as ckpt:
        want = {k: t.load() for k, t in iter_tensors(ckpt.root)}
        dtypes = {t.key: t.dtype for _, t in iter_tensors(ckpt.root)}
    with zipfile.ZipFile(src) as z:
        replace = {"basic/byteorder": b"big"}
        for key, dtype in dtypes.items():
            data = np.frombuffer(z.read(f"basic/data/{key}"), dtype)
            replace[f"basic/data/{key}"] = data.byteswap().tobytes()
    with open_checkpoint(rewrite(src, tmp_path / "big.pt", replace=replace)) as ckpt:
        for key, t in iter_tensors(ckpt.root):
            np.testing.assert_array_equal(t.load(), want[key], err_msg=key)


def test_compressed_members_still_read(tmp_path):
    path = rewrite(FILES / "basic.pt", tmp_path / "deflated.pt", compression=zipfile.ZIP_DEFLATED)
    with open_checkpoint(path) as ckpt:
        np.testing.assert_array_equal(ckpt.root["base_slice"].load(),
                                      np.arange(24.0).reshape(4, 6)[1:, 2:5])


def test_load_after_close_is_an_error():
    with open_checkpoint(FILES / "basic.pt") as ckpt:
        t = ckpt.root["f32"]
    with pytest.raises(ValueError, match="closed"):
        t.load()


def test_memory_is_about_one_copy(tmp_path):
    rows, cols = 1024, 4096  # 16 MiB of float32
    data = np.arange(rows * cols, dtype=np.float32)
    path = write_archive(tmp_path / "big.pt", tensor_pickle((rows, cols), (cols, 1)),
                         {"0": data.tobytes()})
    transposed = write_archive(tmp_path / "bigt.pt", tensor_pickle((cols, rows), (1, cols)),
                               {"0": data.tobytes()})
    matrix = data.reshape(rows, cols)
    # contiguous: read straight into the result; a view: one storage-sized buffer more
    for file, factor, want in [(path, 1.05, matrix), (transposed, 2.05, matrix.T)]:
        with open_checkpoint(file) as ckpt:
            tracemalloc.start()
            value = ckpt.root["w"].load()
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        assert peak < factor * data.nbytes, (file.name, peak)
        np.testing.assert_array_equal(value, want)


# ---------------------------------------------------------------- broken files

def test_truncated_file(tmp_path):
    data = (FILES / "basic.pt").read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointFormatError, match="truncated") as err:
        open_checkpoint(path)
    assert str(path) in str(err.value)


def test_storage_shorter_than_declared(tmp_path):
    path = rewrite(FILES / "basic.pt", tmp_path / "short.pt", replace={"basic/data/0": b"\0" * 5})
    with pytest.raises(CheckpointFormatError, match="'basic/data/0' has 5 bytes") as err:
        open_checkpoint(path)
    assert str(path) in str(err.value) and "truncated" in str(err.value)


def test_tampered_tensor_is_checked_before_allocating(tmp_path):
    """A BUILD that enlarges a LazyTensor's shape is caught by load(), before np.empty."""
    pkl = tensor_pickle((2,), (1,))[:-2] + b"(dS'shape'\n(I1000000000000\ntsbs."
    with open_checkpoint(write_archive(tmp_path / "t.pt", pkl, {"0": b"\0" * 8})) as ckpt:
        assert ckpt.root["w"].shape == (10**12,)
        with pytest.raises(CheckpointFormatError, match="has 8 bytes but a tensor needs"):
            ckpt.root["w"].load()


def test_tensor_larger_than_declared_storage(tmp_path):
    path = write_archive(tmp_path / "t.pt", tensor_pickle((4,), (1,), numel=3), {"0": b"\0" * 16})
    with pytest.raises(CheckpointFormatError, match="storage '0'") as err:
        open_checkpoint(path)
    assert str(path) in str(err.value)


def test_missing_storage_member(tmp_path):
    path = rewrite(FILES / "basic.pt", tmp_path / "gone.pt", drop=["basic/data/1"])
    with pytest.raises(CheckpointFormatError, match="'basic/data/1' is missing") as err:
        open_checkpoint(path)
    assert str(path) in str(err.value)


def test_zip_without_data_pkl(tmp_path):
    path = tmp_path / "arrays.npz"
    np.savez(path, a=np.ones(3))
    with pytest.raises(CheckpointFormatError, match="data.pkl") as err:
        open_checkpoint(path)
    assert str(path) in str(err.value) and "torch.save" in str(err.value)


def test_not_a_zip(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello")
    with pytest.raises(CheckpointFormatError, match="not a zip archive") as err:
        open_checkpoint(path)
    assert str(path) in str(err.value) and "PyTorch >= 1.6" in str(err.value)


def test_legacy_torch_file():
    path = FILES / "legacy.pt"
    with pytest.raises(CheckpointFormatError, match="legacy.*re-save") as err:
        open_checkpoint(path)
    assert str(path) in str(err.value)


def test_unsupported_storage_dtype(tmp_path):
    path = write_archive(tmp_path / "q.pt", tensor_pickle((2,), (1,), storage="QInt8Storage"),
                         {"0": b"\0\0"})
    with pytest.raises(CheckpointFormatError, match="unsupported storage dtype torch.QInt8Storage"):
        open_checkpoint(path)


def test_huge_memo_index_is_refused_before_unpickling(tmp_path):
    """LONG_BINPUT 2**31-1 would make the C unpickler allocate a 16 GiB memo table."""
    path = write_archive(tmp_path / "memo.pt", b"\x80\x02}r\xff\xff\xff\x7f.")
    with pytest.raises(CheckpointFormatError, match="memo index 2147483647"):
        open_checkpoint(path)


def test_garbage_pickle(tmp_path):
    path = write_archive(tmp_path / "g.pt", b"\x80\x02}q\x00(X\x01")
    with pytest.raises(CheckpointFormatError, match="pickle") as err:
        open_checkpoint(path)
    assert str(path) in str(err.value)


# ---------------------------------------------------------------- malicious pickles

@pytest.fixture
def marker(tmp_path):
    """A file that a successful attack would create."""
    path = tmp_path / "pwned"
    yield path
    assert not path.exists(), "the pickle executed code"


def stack_global(module: str, name: str, arg: str) -> bytes:
    """Protocol 4: module name STACK_GLOBAL arg TUPLE1 REDUCE."""
    s = lambda t: b"\x8c" + bytes([len(t)]) + t.encode() + b"\x94"  # noqa: E731
    return b"\x80\x04" + s(module) + s(name) + b"\x93" + s(arg) + b"\x85R."


def attacks(cmd: str) -> list:
    """(refused global, pickle) pairs; each would run `cmd` under plain pickle.load."""
    return [
        ("os.system", f"cos\nsystem\n(S'{cmd}'\ntR.".encode()),  # GLOBAL + REDUCE
        ("posix.system", f"cposix\nsystem\n(S'{cmd}'\ntR.".encode()),
        ("os.system", stack_global("os", "system", cmd)),  # protocol 4 STACK_GLOBAL
        ("os.system", f"(S'{cmd}'\nios\nsystem\n.".encode()),  # INST
        ("os.system", f"(cos\nsystem\nS'{cmd}'\no.".encode()),  # OBJ
        ("subprocess.getoutput", stack_global("subprocess", "getoutput", cmd)),
        ("builtins.eval", f"c__builtin__\neval\n(S'__import__(\"os\").system(\"{cmd}\")'\ntR."
         .encode()),
        ("builtins.exec", stack_global("builtins", "exec", f"import os; os.system('{cmd}')")),
        ("builtins.getattr", b"cbuiltins\ngetattr\n(cbuiltins\nobject\nS'__subclasses__'\ntR."),
        ("builtins.__import__", b"c__builtin__\n__import__\n(S'os'\ntR."),
        ("importlib.import_module", stack_global("importlib", "import_module", "os")),
        ("runpy._run_code", stack_global("runpy", "_run_code", cmd)),
    ]


@pytest.mark.parametrize("skip_unknown", [False, True])
def test_malicious_globals_are_refused_by_name(tmp_path, marker, skip_unknown):
    for qualname, pkl in attacks(f"touch {marker}"):
        path = write_archive(tmp_path / "evil.pt", pkl)
        with pytest.raises(UnsafeCheckpointError) as err:
            open_checkpoint(path, skip_unknown=skip_unknown)
        assert f"'{qualname}'" in str(err.value) and str(path) in str(err.value)
        assert "execute code" in str(err.value)


def test_skip_mode_never_imports_or_calls_unknown_globals(tmp_path, marker, monkeypatch):
    module_dir = tmp_path / "mods"
    module_dir.mkdir()
    (module_dir / "evil_mod_xyz.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        f"def run(*a):\n    open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(module_dir))
    # evil_mod_xyz.run('x') -> then call the result, then APPENDS/SETITEMS/BUILD onto it
    pkl = (b"}(S'a'\ncevil_mod_xyz\nrun\n(S'x'\ntRS'b'\ncevil_mod_xyz\nrun\n)R)R"
           b"S'c'\ncevil_mod_xyz\nThing\n)R(I1\nI2\ne(S'k'\nI3\nu(dS'z'\nI4\nsbu.")
    with open_checkpoint(write_archive(tmp_path / "evil.pt", pkl), skip_unknown=True) as ckpt:
        a, b, c = ckpt.root["a"], ckpt.root["b"], ckpt.root["c"]
    assert "evil_mod_xyz" not in sys.modules
    assert isinstance(a, UnknownGlobal) and a.qualname == "evil_mod_xyz.run" and a.args == ("x",)
    assert isinstance(b, UnknownGlobal)
    assert c.items == [1, 2] and c.mapping == {"k": 3} and c.state == {"z": 4}
    with pytest.raises(UnsafeCheckpointError, match="'evil_mod_xyz.run'"):
        open_checkpoint(tmp_path / "evil.pt")  # strict mode refuses it outright


def test_extension_opcodes_are_refused(tmp_path, marker):
    code = 0xF1
    copyreg.add_extension("os", "system", code)
    try:
        pkl = b"\x80\x02\x82" + bytes([code]) + f"(S'touch {marker}'\ntR.".encode()
        for skip in (False, True):
            with pytest.raises(UnsafeCheckpointError, match="EXT1"):
                open_checkpoint(write_archive(tmp_path / "ext.pt", pkl), skip_unknown=skip)
    finally:
        copyreg.remove_extension("os", "system", code)


@pytest.mark.parametrize("pid", [
    b"Pfoo\n",  # protocol-0 string id
    b"(S'module'\nS'x'\nS'y'\nS'z'\nS'w'\ntQ",  # torch.package style id
    b"(S'storage'\nS'torch.FloatStorage'\nS'0'\nS'cpu'\nI2\ntQ",  # type is not a stand-in
    b"(S'storage'\nctorch\nFloatStorage\nS'../../etc/passwd'\nS'cpu'\nI2\ntQ",
    b"(S'storage'\nctorch\nFloatStorage\nS'0'\nS'cpu'\nI-1\ntQ",
])
def test_odd_persistent_ids_are_refused(tmp_path, pid):
    path = write_archive(tmp_path / "pid.pt", pid + b".")
    with pytest.raises(CheckpointFormatError, match="persistent id|storage id") as err:
        open_checkpoint(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("target", ["ctorch._utils\n_rebuild_tensor_v2\n", "ctorch\nFloatStorage\n",
                                    "ctorch\nfloat32\n", "ccollections\nOrderedDict\n",
                                    "ccollections\nCounter\n", "ctorch\nSize\n"])
def test_build_cannot_tamper_with_stand_ins(tmp_path, target):
    """BUILD with a slot state does setattr() on the object; on a resolved global that would
    change it for the whole process."""
    pkl = f"{target}(N}}S'__defaults__'\n(I1\ntstb.".encode()
    with pytest.raises(CheckpointFormatError):
        open_checkpoint(write_archive(tmp_path / "b.pt", pkl))
    assert not hasattr(collections.Counter, "__defaults__")
    with open_checkpoint(FILES / "basic.pt") as ckpt:  # later loads are unaffected
        np.testing.assert_array_equal(ckpt.root["base_row"].load(), np.arange(18.0, 24.0))


def test_reading_imports_nothing_and_never_torch():
    script = textwrap.dedent(f"""
        import sys
        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] == 'torch':
                    raise ImportError('torch must not be imported')
        sys.meta_path.insert(0, NoTorch())
        from sonar_jax.convert.torch_pickle import open_checkpoint, iter_tensors
        before = set(sys.modules)
        for name in ['basic', 'params', 'module_state', 'fairseq_like']:
            with open_checkpoint({str(FILES)!r} + f'/{{name}}.pt', skip_unknown=True) as c:
                for _, t in iter_tensors(c.root):
                    t.load()
        new = set(sys.modules) - before
        assert not new, new
        assert 'torch' not in sys.modules
        print('ok')
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                         cwd=REPO)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
