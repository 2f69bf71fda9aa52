"""The files a model's stages leave for the next ones, under ``runs/<profile>/<model>/artifacts/``."""

from __future__ import annotations

import json
from pathlib import Path

from zoobook.paths import artifacts_dir


class Artifacts:
    def __init__(self, model: str) -> None:
        self.model = model

    def folder(self, profile: str) -> Path:
        return artifacts_dir(profile, self.model)

    def read(self, profile: str, relative: str, stage: str) -> dict:
        """A JSON file another stage wrote; a clear error naming that stage when it is missing."""
        path = self.folder(profile) / relative
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found; run stage {stage} of {self.model} first")
        return json.loads(path.read_text())

    def compiled(self, profile: str, backend: str) -> dict[str, str]:
        """The artifacts 03-convert compiled for ``backend`` ({name or batch size: path});
        empty when it has not run for that backend."""
        path = self.folder(profile) / "compiled" / f"{backend}.json"
        return json.loads(path.read_text())["artifacts"] if path.is_file() else {}
