"""`make template`: writes the SSM documents' content into template.yaml, from document/ (PrefetchDocument:
content.yaml, the document's parameters and step, and prefetch.sh, the node script; UnpinDocument: unpin.yaml and
unpin.sh; the warm volume builder's documents: WarmPrepareDocument, warm_prepare.yaml and warm_prepare.sh,
WarmPullDocument, PrefetchDocument's own content and script, and WarmSealDocument, warm_seal.yaml and warm_seal.sh),
with the values they share with the functions (eks_prefetch/node_contract.py) in place of their @NAME@ placeholders;
and the user-data scripts the template hands out as Outputs (WarmBootUserData: warm_boot.sh) and puts in launch
templates' user data (WarmLaunchTemplate: warm_boot.sh as the text/x-shellscript part of a MIME multi-part).

Only the text between each document's two marker lines changes; the rest of template.yaml stays byte for byte.
template.yaml is committed as generated, so that `sam deploy` needs no extra step; a unit test fails when it differs
from this output.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from eks_prefetch import node_contract

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE.parent / "template.yaml"


@dataclass(frozen=True)
class Document:
    """One SSM document of the template whose content comes from document/."""

    resource: str
    content: Path
    script: Path

    @property
    def begin(self) -> str:
        return f"      # BEGIN GENERATED {self.resource} content by `make template`: edit document/, not this block."

    @property
    def end(self) -> str:
        return f"      # END GENERATED {self.resource} content"


@dataclass(frozen=True)
class ScriptOutput:
    """A template Output whose Value is a script of document/, as it is, for users to put in their nodes' user data."""

    output: str
    script: Path

    @property
    def begin(self) -> str:
        return f"    # BEGIN GENERATED {self.output} value by `make template`: edit document/, not this block."

    @property
    def end(self) -> str:
        return f"    # END GENERATED {self.output} value"


@dataclass(frozen=True)
class LaunchTemplateUserData:
    """A launch template's UserData: a script of document/ as the one part of a MIME multi-part (so that EKS merges it
    with its own NodeConfig part for managed node groups, and users may add theirs)."""

    resource: str
    script: ScriptOutput

    @property
    def begin(self) -> str:
        return f"        # BEGIN GENERATED {self.resource} UserData by `make template`: edit document/, not this block."

    @property
    def end(self) -> str:
        return f"        # END GENERATED {self.resource} UserData"


PREFETCH = Document("PrefetchDocument", HERE / "content.yaml", HERE / "prefetch.sh")
UNPIN = Document("UnpinDocument", HERE / "unpin.yaml", HERE / "unpin.sh")
WARM_PREPARE = Document("WarmPrepareDocument", HERE / "warm_prepare.yaml", HERE / "warm_prepare.sh")
WARM_SEAL = Document("WarmSealDocument", HERE / "warm_seal.yaml", HERE / "warm_seal.sh")
# The builder's pull: the node's document, under a name of its own, so that nothing that hears of PrefetchDocument's
# commands (the status function's rule and sweep) ever counts the builder as a cluster node.
WARM_PULL = Document("WarmPullDocument", HERE / "content.yaml", HERE / "prefetch.sh")
DOCUMENTS = (PREFETCH, UNPIN, WARM_PREPARE, WARM_PULL, WARM_SEAL)
WARM_BOOT = ScriptOutput("WarmBootUserData", HERE / "warm_boot.sh")
SCRIPT_OUTPUTS = (WARM_BOOT,)
WARM_LAUNCH_TEMPLATE = LaunchTemplateUserData("WarmLaunchTemplate", WARM_BOOT)
LAUNCH_TEMPLATES = (WARM_LAUNCH_TEMPLATE,)
# The MIME boundary of the launch template's user data: no line of the script may start with "--" and it.
MIME_BOUNDARY = "==EKS-IMAGE-PREFETCH-WARM-BOOT=="
# EC2's limit on user data, before base64.
USER_DATA_MAX_BYTES = 16 * 1024
# Where LaunchTemplateData's members sit (8 spaces); UserData's Fn::Base64 2 deeper, its literal block 2 more.
USER_DATA_INDENT = " " * 8
# Where an Output's Value sits: its members at 4 spaces, the literal block's lines 2 deeper.
VALUE_INDENT = " " * 4
# The prefetch document's, by the names the harness and tests use.
CONTENT, SCRIPT, BEGIN, END = PREFETCH.content, PREFETCH.script, PREFETCH.begin, PREFETCH.end
# Where the block sits: PrefetchDocument's Properties (6 spaces), Content's members 2 deeper.
CONTENT_INDENT = " " * 8
SCRIPT_LINE = re.compile(r'^(?P<indent> *)- "@SCRIPT@"$', re.MULTILINE)
PLACEHOLDER = re.compile(r"@([A-Z][A-Z0-9_]*)@")


def ere_literal(text: str) -> str:
    """``text`` matched literally in a bash ERE. Label-like text only, where dots are all that needs escaping."""
    if not all(char.isalnum() or char in "._/-" for char in text):
        raise ValueError(f"not label-like text: {text!r}")
    return text.replace(".", r"\.")


def values() -> dict[str, str]:
    """Each placeholder of document/ and its value, from node_contract."""
    contract = node_contract
    return {
        "SCRIPT_REFERENCE_RE": contract.SCRIPT_REFERENCE_RE,
        "DIGEST_RE": f"^{contract.DIGEST_PATTERN}$",
        "IMAGES_ALLOWED_PATTERN": contract.IMAGES_ALLOWED_PATTERN,
        "MAX_IMAGES_PER_COMMAND": str(contract.MAX_IMAGES_PER_COMMAND),
        "PIN_LABEL": contract.PIN_LABEL,
        "PIN_VALUE": contract.PIN_VALUE,
        "OUR_PIN_LABEL": contract.OUR_PIN_LABEL,
        "PIN_LABEL_RE": ere_literal(contract.PIN_LABEL),
        "PIN_VALUE_RE": ere_literal(contract.PIN_VALUE),
        "OUR_PIN_LABEL_RE": ere_literal(contract.OUR_PIN_LABEL),
        "DEADLINE_MARGIN_DIVISOR": str(contract.DEADLINE_MARGIN_DIVISOR),
        "DEADLINE_MARGIN_MIN_SECONDS": str(contract.DEADLINE_MARGIN_MIN_SECONDS),
        "DEADLINE_MARGIN_MAX_SECONDS": str(contract.DEADLINE_MARGIN_MAX_SECONDS),
        "LOCK_FILE": contract.LOCK_FILE,
        "PLATFORM_SKIP_REASON": contract.PLATFORM_SKIP_REASON,
        "NO_CONTAINERD_SOCKET": contract.NO_CONTAINERD_SOCKET,
        "CONTAINERD_SOCKET_WAIT_SECONDS": str(contract.CONTAINERD_SOCKET_WAIT_SECONDS),
        "CONTAINERD_NOT_UP": contract.CONTAINERD_NOT_UP,
        "PUSHED_AT_LABEL": contract.PUSHED_AT_LABEL,
        "PUSHED_AT_LABEL_RE": ere_literal(contract.PUSHED_AT_LABEL),
        "PUSHED_AT_ALLOWED_PATTERN": contract.PUSHED_AT_ALLOWED_PATTERN,
        "DEFAULT_CONNECTIONS": str(contract.DEFAULT_CONNECTIONS),
        "MAX_CONNECTIONS": str(contract.MAX_CONNECTIONS),
        "CONNECTIONS_ALLOWED_PATTERN": contract.CONNECTIONS_ALLOWED_PATTERN,
        "RANGE_CHUNK_BYTES": str(contract.RANGE_CHUNK_BYTES),
        "RANGE_CHUNK_MIB": str(contract.RANGE_CHUNK_BYTES >> 20),
    }


def _substitute(text: str, source: Path, forbidden: str, keep: str = "") -> str:
    """``text`` with its placeholders but ``keep`` filled in. A value may not hold a character of ``forbidden``: the
    quoting around its placeholder (single quotes in the script, double quotes in the YAML) would not hold it."""
    known = values()

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == keep:
            return match.group(0)
        if name not in known:
            raise ValueError(f"{source.name}: unknown placeholder @{name}@")
        value = known[name]
        if any(char in value for char in forbidden):
            raise ValueError(f"{source.name}: the value of @{name}@ cannot go where its placeholder is: {value!r}")
        return value

    return PLACEHOLDER.sub(one, text)


def unused_values() -> set[str]:
    """Values no file of document/ asks for (a placeholder renamed on one side only)."""
    used = {
        name
        for document in DOCUMENTS
        for path in (document.content, document.script)
        for name in PLACEHOLDER.findall(path.read_text())
    }
    return set(values()) - used


def _indented(text: str, indent: str) -> str:
    # Blank lines stay empty: a literal block keeps them as they are, and the template has no trailing spaces.
    return "".join(indent + line if line.strip() else line for line in text.splitlines(keepends=True))


def render_script(document: Document = PREFETCH) -> str:
    """The document's script as it runs on the node."""
    script = _substitute(document.script.read_text(), document.script, "'\n")
    if not script.startswith("#!") or not script.endswith("\n") or script.endswith("\n\n"):
        # A literal block takes its indentation from the first line, and `|` keeps exactly one final newline.
        raise ValueError(f"{document.script} must start with #! and end with exactly one newline")
    return script


def render_content(document: Document = PREFETCH) -> str:
    """The document's content as YAML text, at indentation 0, with the script as a literal block."""
    content = _content_text(document)
    match = SCRIPT_LINE.search(content)
    if match is None:
        raise ValueError(f'{document.content} has no `- "@SCRIPT@"` line')
    script_block = f"{match['indent']}- |\n" + _indented(render_script(document), match["indent"] + "  ")
    return content[: match.start()] + script_block + content[match.end() + 1 :]


def _content_text(document: Document) -> str:
    # The script goes in as a literal block (render_content), not as a value.
    return _substitute(document.content.read_text(), document.content, '"\\\n', keep="SCRIPT")


def expected_content(document: Document = PREFETCH) -> dict[str, Any]:
    """The content as a YAML parser reads document/: what template.yaml's block must parse to."""
    content = yaml.safe_load(_content_text(document))
    (step,) = content["mainSteps"]
    step["inputs"]["runCommand"] = [render_script(document)]
    return content


def render_template(template: str) -> str:
    """``template`` (template.yaml's text) with every document's block between its markers regenerated."""
    unused = unused_values()
    if unused:
        raise ValueError(f"values that no file of document/ uses: {sorted(unused)}")
    for document in DOCUMENTS:
        template = _render_block(template, document)
    for output in SCRIPT_OUTPUTS:
        template = _render_value(template, output)
    for launch_template in LAUNCH_TEMPLATES:
        template = _render_user_data(template, launch_template)
    return template


def render_mime_user_data(launch_template: LaunchTemplateUserData = WARM_LAUNCH_TEMPLATE) -> str:
    """The script as the one text/x-shellscript part of a MIME multi-part user data (cloud-init runs it; EKS merges a
    MIME multi-part with its NodeConfig part for managed node groups)."""
    script = render_output_script(launch_template.script)
    if any(line.startswith("--" + MIME_BOUNDARY) for line in script.splitlines()):
        raise ValueError(f"{launch_template.script.script} has a line that would end the MIME part")
    if not script.isascii():
        raise ValueError(f"{launch_template.script.script} is not ASCII (the part says us-ascii)")
    user_data = (
        "MIME-Version: 1.0\n"
        f'Content-Type: multipart/mixed; boundary="{MIME_BOUNDARY}"\n'
        "\n"
        f"--{MIME_BOUNDARY}\n"
        'Content-Type: text/x-shellscript; charset="us-ascii"\n'
        "\n"
        f"{script}"
        "\n"
        f"--{MIME_BOUNDARY}--\n"
    )
    if len(user_data.encode()) > USER_DATA_MAX_BYTES:
        raise ValueError(f"{launch_template.resource}'s user data is over EC2's {USER_DATA_MAX_BYTES} bytes")
    return user_data


def _render_user_data(template: str, launch_template: LaunchTemplateUserData) -> str:
    lines, begin, end = _marked_span(template, launch_template.begin, launch_template.end, launch_template.resource)
    user_data = render_mime_user_data(launch_template)
    block = (
        f"{USER_DATA_INDENT}UserData:\n{USER_DATA_INDENT}  Fn::Base64: |\n"
        f"{_indented(user_data, USER_DATA_INDENT + '    ')}"
    )
    if yaml.safe_load(block) != {"UserData": {"Fn::Base64": user_data}}:
        raise AssertionError(f"the generated block does not parse back to {launch_template.resource}'s user data")
    return (
        "".join(lines[:begin]) + f"{launch_template.begin}\n{block}{launch_template.end}\n" + "".join(lines[end + 1 :])
    )


def render_output_script(output: ScriptOutput = WARM_BOOT) -> str:
    """The script as the Output gives it: the file, unchanged (it has no placeholders)."""
    script = output.script.read_text()
    if PLACEHOLDER.search(script):
        raise ValueError(f"{output.script} has a placeholder; an Output's script is handed out as it is")
    if not script.startswith("#!") or not script.endswith("\n") or script.endswith("\n\n"):
        raise ValueError(f"{output.script} must start with #! and end with exactly one newline")
    return script


def _marked_span(template: str, begin_marker: str, end_marker: str, name: str) -> tuple[list[str], int, int]:
    lines = template.splitlines(keepends=True)
    stripped = [line.rstrip("\n") for line in lines]
    if stripped.count(begin_marker) != 1 or stripped.count(end_marker) != 1:
        raise ValueError("template.yaml must hold each marker line exactly once:\n" + begin_marker + "\n" + end_marker)
    begin, end = stripped.index(begin_marker), stripped.index(end_marker)
    if end < begin:
        raise ValueError(f"the END marker of {name} comes before its BEGIN marker")
    return lines, begin, end


def _render_value(template: str, output: ScriptOutput) -> str:
    lines, begin, end = _marked_span(template, output.begin, output.end, output.output)
    script = render_output_script(output)
    value = f"{VALUE_INDENT}Value: |\n{_indented(script, VALUE_INDENT + '  ')}"
    if yaml.safe_load(value) != {"Value": script}:
        raise AssertionError(f"the generated block does not parse back to {output.script.name}")
    return "".join(lines[:begin]) + f"{output.begin}\n{value}{output.end}\n" + "".join(lines[end + 1 :])


def _render_block(template: str, document: Document) -> str:
    lines, begin, end = _marked_span(template, document.begin, document.end, document.resource)
    content = render_content(document)
    if yaml.safe_load(content) != expected_content(document):
        raise AssertionError(f"the generated block does not parse back to {document.resource}'s content")
    block = f"{document.begin}\n{CONTENT_INDENT[:-2]}Content:\n{_indented(content, CONTENT_INDENT)}{document.end}\n"
    return "".join(lines[:begin]) + block + "".join(lines[end + 1 :])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if template.yaml is not up to date")
    args = parser.parse_args(argv)
    current = TEMPLATE.read_text()
    generated = render_template(current)
    if args.check:
        if generated != current:
            print("template.yaml is out of date: run `make template`", file=sys.stderr)
            return 1
        return 0
    if generated != current:
        TEMPLATE.write_text(generated)
        print("template.yaml: the SSM documents' content and the scripts' Outputs regenerated from document/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
