"""Prompt templates are data: one YAML file per prompt in prompts/, validated on load, rendered in Jinja's sandbox.

The document is only ever a variable (`{{ document }}`), never template source, so braces or "ignore previous
instructions" in web text are passed to the model as text and cannot change the template. A broken template fails
at load, before any model is started, naming the file and line. The content hash of the file goes into every
synthetic row, so an edit to a prompt is visible in the data even if nobody bumps the version.
"""

from __future__ import annotations

import hashlib
from functools import cached_property
from pathlib import Path

import jinja2
import yaml
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rephrase.config import ValidatorConfig
from rephrase.llm.control import neutralise

_ENV = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)


class PromptError(ValueError):
    """A prompt file that cannot be used; the message names the file and, for template errors, the line."""


class PromptSampling(BaseModel):
    model_config = ConfigDict(extra="forbid")
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)


class PromptSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-z0-9_]+$")
    version: int = Field(ge=1)
    description: str
    system: str = ""
    user: str
    sampling: PromptSampling = Field(default_factory=PromptSampling)
    validators: list[ValidatorConfig] = Field(
        default_factory=list, description="Extra validators this prompt needs, checked as the run config's are."
    )


class Prompt:
    def __init__(self, spec: PromptSpec, path: Path, content_hash: str) -> None:
        self.spec = spec
        self.path = path
        self.hash = content_hash

    def __getstate__(self) -> dict:
        # compiled templates are rebuilt on demand; steps are pickled to datatrove's workers
        return {k: v for k, v in self.__dict__.items() if k not in ("_system", "_user")}

    @cached_property
    def _system(self) -> jinja2.Template:
        return _ENV.from_string(self.spec.system)

    @cached_property
    def _user(self) -> jinja2.Template:
        return _ENV.from_string(self.spec.user)

    @property
    def ref(self) -> str:
        return f"{self.spec.name}@v{self.spec.version}"

    def messages(self, document: str, controls: tuple[str, ...] = ()) -> list[dict[str, str]]:
        """Chat messages for one document; the system message is omitted when the prompt has none. `controls`
        (rephrase.llm.control.control_strings of the engine's tokenizer) are neutralised in the document, so the
        rendered prompt holds only the chat template's own control tokens, whatever the page says."""
        document = neutralise(document, controls)
        msgs = [{"role": "system", "content": self._system.render(document=document).strip()}]
        msgs.append({"role": "user", "content": self._user.render(document=document).strip()})
        return [m for m in msgs if m["content"]]


def _template_line(path: Path, text: str, field: str, lineno: int) -> int:
    """Line in the YAML file of line `lineno` of the template in `field` (block scalars start one line down)."""
    root = yaml.compose(text)
    for key, value in getattr(root, "value", []):
        if key.value == field:
            return value.start_mark.line + (1 if value.style in ("|", ">") else 0) + lineno
    return lineno


def load_prompt(path: Path) -> Prompt:
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise PromptError(f"{path}: not valid YAML: {e}") from e
    try:
        spec = PromptSpec.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise PromptError(f"{path}: {problems}") from None
    if spec.name != path.stem:
        raise PromptError(f"{path}: name {spec.name!r} must match the file name {path.stem!r}")
    for field in ("system", "user"):
        try:
            parsed = _ENV.parse(getattr(spec, field))
        except jinja2.TemplateSyntaxError as e:
            line = _template_line(path, text, field, e.lineno)
            raise PromptError(f"{path}:{line}: {field} template: {e.message}") from None
        from jinja2 import meta

        unknown = meta.find_undeclared_variables(parsed) - {"document"}
        if unknown:
            raise PromptError(f"{path}: {field} template uses {sorted(unknown)}; only {{{{ document }}}} is provided")
    if "document" not in spec.user:
        raise PromptError(f"{path}: user template never shows the document ({{{{ document }}}})")
    return Prompt(spec, path, hashlib.sha256(text.encode("utf-8")).hexdigest()[:12])


def load_prompts(folder: str | Path) -> dict[str, Prompt]:
    folder = Path(folder)
    if not folder.is_dir():
        raise PromptError(f"prompts folder {folder} not found")
    prompts = {}
    for path in sorted(folder.glob("*.yaml")):
        prompt = load_prompt(path)
        prompts[prompt.spec.name] = prompt
    return prompts


def find_prompt(prompts: dict[str, Prompt], ref: str, where: str) -> Prompt:
    """A prompt by `name` or `name@vN`; a pinned version must be the file's (a stale config is not run silently)."""
    name, _, version = ref.partition("@")
    if name not in prompts:
        raise PromptError(f"unknown prompt {ref!r} in {where}; known: {', '.join(p.ref for p in prompts.values())}")
    prompt = prompts[name]
    if version and version != f"v{prompt.spec.version}":
        raise PromptError(f"prompt {ref!r} in {where}: {prompt.path.name} is {prompt.ref}")
    return prompt


def select_prompts(folder: str | Path, refs: set[str]) -> dict[str, Prompt]:
    """The prompts a run needs, by name; an unknown name or a pinned version the file does not have fails."""
    prompts = load_prompts(folder)
    chosen = [find_prompt(prompts, ref, "routing rules") for ref in sorted(refs)]
    return {p.spec.name: p for p in sorted(chosen, key=lambda p: p.spec.name)}
