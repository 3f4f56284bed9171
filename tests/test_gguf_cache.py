"""The GGUF conversion cache: a conversion killed while writing its marker is never used."""
import pytest
from tiny import names

from split_plugin import gguf_cache, models


def test_model_cache_conversion_killed_at_the_marker(tmp_path, monkeypatch):
    monkeypatch.setenv(gguf_cache.CACHE_ENV, str(tmp_path / "cache"))
    gguf = tmp_path / "Fake.Q4_1.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 60)
    monkeypatch.setattr(gguf_cache, "_convert_gguf", lambda g, out: (out / "config.json").write_text("{}"))
    real_write = gguf_cache._write_json

    def killed_at_marker(path, data):
        if path.name == gguf_cache.MARKER:
            path.write_text('{"half')
            raise KeyboardInterrupt
        real_write(path, data)

    monkeypatch.setattr(gguf_cache, "_write_json", killed_at_marker)
    with pytest.raises(KeyboardInterrupt):
        models.ensure_converted(gguf)
    final = models.converted_dir(gguf)
    assert not final.exists() and names(tmp_path / "cache") == []
    monkeypatch.setattr(gguf_cache, "_write_json", real_write)
    assert models.is_complete(models.ensure_converted(gguf))
