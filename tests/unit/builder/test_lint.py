"""Build checks: BuildKit's rule names, messages and lines on small Dockerfiles."""

from __future__ import annotations

from shared.buildcontext import PatternMatcher
from services.builder.frontend import BuildArgs, ImageState, dispatch_stage, parse


def lints(text: str, ignore: list[str] | None = None) -> list[tuple[str, str, int]]:
    df = parse(text)
    args = BuildArgs(given={})
    args.evaluate_meta(df)
    found = list(df.lints)
    for stage in df.stages:
        found += dispatch_stage(df, stage, ImageState.scratch(), args,
                                PatternMatcher(ignore) if ignore is not None else None).lints
    return [(f.rule.name, f.message, f.line) for f in found]


def test_parse_time_rules():
    assert lints("from scratch As Build\nMAINTAINER me\n") == [
        ("StageNameCasing", "Stage name 'Build' should be lowercase", 1),
        ("FromAsCasing", "'As' and 'from' keywords' casing do not match", 1),
        ("MaintainerDeprecated", "Maintainer instruction is deprecated in favor of using label", 2),
    ]
    assert lints("FROM scratch AS build\nfrom scratch as two\nFrom scratch AS three\n") == []


def test_json_args_and_secrets():
    found = lints("FROM scratch\nARG GITHUB_TOKEN\nENV DB_PASSWORD=x PUBLIC_KEY=y API_VERSION=1\n"
                  "CMD echo hi\nENTRYPOINT [\"/x\"]\n")
    assert found == [
        ("SecretsUsedInArgOrEnv", 'Do not use ARG or ENV instructions for sensitive data (ARG "GITHUB_TOKEN")', 2),
        ("SecretsUsedInArgOrEnv", 'Do not use ARG or ENV instructions for sensitive data (ENV "DB_PASSWORD")', 3),
        ("JSONArgsRecommended", "JSON arguments recommended for CMD to prevent unintended behavior related to "
         "OS signals", 4),
    ]
    assert lints('FROM scratch\nSHELL ["/bin/bash", "-c"]\nCMD echo hi\n') == []


def test_undefined_var_with_a_suggestion():
    found = lints("FROM scratch\nARG DECLARED\nENV MY_DIR=/x\nCOPY $DECLARED $MY_DIRR /dst/\nWORKDIR ${NOPE:-/w}\n"
                  "RUN echo $NOT_CHECKED_IN_RUN\n")
    assert found == [
        ("UndefinedVar", "Usage of undefined variable '$MY_DIRR' (did you mean $MY_DIR?)", 4),
        ("UndefinedVar", "Usage of undefined variable '$NOPE'", 5),
    ]


def test_copy_ignored_file():
    text = "FROM scratch\nCOPY secret.txt /x\nCOPY ok.txt /y\nADD build/out.bin /z\nCOPY . /all\n"
    assert lints(text, ["secret.txt", "build"]) == [
        ("CopyIgnoredFile", 'Attempting to Copy file "secret.txt" that is excluded by .dockerignore', 2),
        ("CopyIgnoredFile", 'Attempting to Add file "build/out.bin" that is excluded by .dockerignore', 4),
    ]
    assert [f[1] for f in lints(text, ["*"])][-1] == 'Attempting to Copy file "." that is excluded by .dockerignore'
    assert lints(text, ["*", "!ok.txt"]) == []  # with exceptions BuildKit does not guess
    assert lints(text) == []
