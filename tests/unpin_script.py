"""Print the uninstall's unpin script as extracted from template.yaml (for shellcheck)."""

from harness.template import resource

if __name__ == "__main__":
    (step,) = resource("UnpinDocument")["Properties"]["Content"]["mainSteps"]
    (script,) = step["inputs"]["runCommand"]
    print(script, end="")
