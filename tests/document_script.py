"""Print the SSM document's script as extracted from template.yaml (for shellcheck)."""

from harness.template import document_script

if __name__ == "__main__":
    print(document_script(), end="")
