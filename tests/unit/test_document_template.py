"""template.yaml's PrefetchDocument content is generated from document/ (`make template`): the committed template
must be what the generator makes, since `sam deploy` reads it as it is."""

from __future__ import annotations

from document import generate
from harness import template as cfn


def test_committed_template_is_generated_from_document():
    committed = generate.TEMPLATE.read_text()

    assert generate.render_template(committed) == committed, "template.yaml is out of date: run `make template`"


def test_template_holds_the_script_and_parameters_of_document():
    """What the harness (and CloudFormation) read from the template is document/'s content, script included."""
    assert cfn.document_content() == generate.expected_content()
    assert cfn.document_script() == generate.SCRIPT.read_text()


def test_only_the_block_between_the_markers_changes(tmp_path):
    committed = generate.TEMPLATE.read_text()
    before, _, rest = committed.partition(generate.BEGIN + "\n")
    _, _, after = rest.partition(generate.END + "\n")
    stale = before + generate.BEGIN + "\n      Content: {}\n" + generate.END + "\n" + after

    assert generate.render_template(stale) == committed
