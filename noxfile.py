"""Developer sessions: `nox -s tests`, `nox -s lint`, `nox -s demo`, `nox -s bench`."""

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True


@nox.session(python="3.11")
def tests(session):
    session.install("-r", "requirements-dev.txt")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(python="3.11")
def lint(session):
    session.install("ruff>=0.5")
    session.run("ruff", "check", "packages", "tests", "bench", "noxfile.py")


@nox.session(python="3.11")
def demo(session):
    session.install("-r", "requirements.txt")
    session.run("fair", "run", "examples/quickstart.json", "--overwrite", *session.posargs)


@nox.session(python="3.11")
def bench(session):
    session.install("-r", "requirements-dev.txt")
    for script in sorted(__import__("pathlib").Path("bench").glob("*.py")):
        session.run("python", str(script), *session.posargs)
