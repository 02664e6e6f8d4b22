"""template.yaml's SSM documents' content is generated from document/ (`make template`): the committed template
must be what the generator makes, since `sam deploy` reads it as it is."""

from __future__ import annotations

import re
import subprocess

import pytest

from document import generate
from eks_prefetch import node_contract
from harness import template as cfn


def test_committed_template_is_generated_from_document():
    committed = generate.TEMPLATE.read_text()

    assert generate.render_template(committed) == committed, "template.yaml is out of date: run `make template`"


def test_template_holds_the_script_and_parameters_of_document():
    """What the harness (and CloudFormation) read from the template is document/'s content, script included."""
    assert cfn.document_content() == generate.expected_content()
    assert cfn.document_script() == generate.render_script()


def test_the_unpin_document_is_generated_from_document_too():
    (step,) = cfn.resource("UnpinDocument")["Properties"]["Content"]["mainSteps"]

    assert cfn.resource("UnpinDocument")["Properties"]["Content"] == generate.expected_content(generate.UNPIN)
    assert step["inputs"]["runCommand"] == [generate.render_script(generate.UNPIN)]
    assert f"OUR_LABEL='{node_contract.OUR_PIN_LABEL}'" in generate.render_script(generate.UNPIN)


@pytest.mark.parametrize("document", generate.DOCUMENTS, ids=lambda document: document.resource)
def test_only_the_block_between_the_markers_changes(document):
    committed = generate.TEMPLATE.read_text()
    before, _, rest = committed.partition(document.begin + "\n")
    _, _, after = rest.partition(document.end + "\n")
    stale = before + document.begin + "\n      Content: {}\n" + document.end + "\n" + after

    assert generate.render_template(stale) == committed


REFERENCES = [
    "123456789012.dkr.ecr.us-east-1.amazonaws.com/ml/trainer@sha256:" + "ab" * 32,
    "127.0.0.1:5000/demo/app:v1.2_3-rc",
    "public.ecr.aws/docker/library/busybox:1.36",
    "registry/app@sha256:short",
    "Registry/app:v1",
    "registry/app:v1;id",
    "registry/app",
    "registry/-app:v1",
    "registry:123456/app:v1",
    "registry/app:" + "v" * 129,
]


def _script_assignment(name: str) -> str:
    (line,) = re.findall(rf"^{name}=.*$", generate.render_script(), re.MULTILINE)
    return line


def test_script_and_functions_read_references_and_pins_alike():
    """The patterns reach bash's ERE and Python's re from one source: both must read them the same way."""
    labels = [
        f"{node_contract.PIN_LABEL}={node_contract.PIN_VALUE}",
        f"{node_contract.PIN_LABEL}=pinnedx",
        "ioXcri-containerd.pinned=pinned",
        f"{node_contract.OUR_PIN_LABEL}=1700000000000000000",
    ]
    program = "\n".join(
        [
            _script_assignment("ref_re"),
            _script_assignment("pin_re"),
            _script_assignment("ours_re"),
            'for ref in "${@:2:$1}"; do if [[ "$ref" =~ $ref_re ]]; then echo ref 1; else echo ref 0; fi; done',
            'for label in "${@:$(($1 + 2))}"; do',
            '  if [[ " $label" =~ $pin_re ]]; then echo pin 1; else echo pin 0; fi',
            '  if [[ " $label" =~ $ours_re ]]; then echo ours 1; else echo ours 0; fi',
            "done",
        ]
    )
    argv = ["bash", "-c", program, "bash", str(len(REFERENCES)), *REFERENCES, *labels]
    answers = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split("\n")[:-1]

    pin = re.compile(rf"[ ,]{re.escape(node_contract.PIN_LABEL)}={node_contract.PIN_VALUE}([ ,]|$)")
    ours = re.compile(rf"[ ,]{re.escape(node_contract.OUR_PIN_LABEL)}=([0-9]+)([ ,]|$)")
    expected = [f"ref {int(bool(re.fullmatch(node_contract.REFERENCE_PATTERN, ref)))}" for ref in REFERENCES]
    for label in labels:
        expected += [f"pin {int(bool(pin.search(' ' + label)))}", f"ours {int(bool(ours.search(' ' + label)))}"]
    assert answers == expected
    assert expected.count("ref 1") == 3


def test_document_parameters_come_from_the_contract():
    images = cfn.document_content()["parameters"]["images"]
    assert images["allowedPattern"] == node_contract.IMAGES_ALLOWED_PATTERN
    assert f"at most {node_contract.MAX_IMAGES_PER_COMMAND}:" in images["description"]
    one = "127.0.0.1:5000/demo/app:v1"
    assert re.fullmatch(images["allowedPattern"], ",".join([one] * node_contract.MAX_IMAGES_PER_COMMAND))
    assert not re.fullmatch(images["allowedPattern"], ",".join([one] * (node_contract.MAX_IMAGES_PER_COMMAND + 1)))


@pytest.mark.parametrize("execution_timeout", [20, 49, 50, 51, 599, 600, 601, 3600, 999999])
def test_script_margin_is_the_functions_margin(execution_timeout):
    """The script's own deadline margin, computed by its own lines, is the one Settings allows for."""
    script = generate.render_script()
    start = script.index("margin=$((")
    lines = script[start : script.index("\n", script.index("margin=$margin_max"))]
    program = "\n".join(
        [_script_assignment(name) for name in ("margin_divisor", "margin_min", "margin_max")]
        + [f"execution_timeout={execution_timeout}", lines, 'echo "$margin"']
    )
    out = subprocess.run(["bash", "-c", program], capture_output=True, text=True, check=True).stdout
    assert int(out) == node_contract.deadline_margin_seconds(execution_timeout)
