"""Dockerfiles to plans and image configs, with docker's semantics; bad ones to their errors."""

import pytest

from shared.errors import InvalidArgument
from services.builder.frontend import BuildArgs, ImageState, dispatch_stage, needed_stages, parse, target_stage
from services.builder.frontend import steps as st
from services.builder.frontend.shell import ShellError, expand_word, expand_words

PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def plan(text, build_args=None, target=None, base=None):
    df = parse(text)
    args = BuildArgs(given=build_args or {})
    args.evaluate_meta(df)
    t = target_stage(df, target)
    plans = {}
    for i in needed_stages(df, t, args):
        stage_plan = dispatch_stage(df, df.stages[i], base or ImageState.scratch(), args)
        if stage_plan.base.startswith("stage:"):
            stage_plan = dispatch_stage(df, df.stages[i], plans[int(stage_plan.base[6:])].config, args)
        plans[i] = stage_plan
    return plans, plans[t], args


@pytest.mark.parametrize("env,word,expected", [
    ({"A": "x"}, "$A", "x"),
    ({"A": "x"}, "${A}b", "xb"),
    ({}, "${A:-def}", "def"),
    ({"A": ""}, "${A:-def}", "def"),
    ({"A": ""}, "${A-def}", ""),
    ({"A": "x"}, "${A:+alt}", "alt"),
    ({}, "${A:+alt}", ""),
    ({"A": "x"}, "'$A'", "$A"),
    ({"A": "x"}, '"$A y"', "x y"),
    ({"A": "x"}, "\\$A", "$A"),
    ({"A": "x"}, '"a \\" b"', 'a " b'),
    ({"A": "x"}, '"a\\nb"', "a\\nb"),
    ({}, "$", "$"),
    ({}, "a$1b", "ab"),
    ({"B": "y"}, "${A:-$B}", "y"),
])
def test_expand_word(env, word, expected):
    assert expand_word(word, env) == expected


def test_expand_words_and_errors():
    assert expand_words('a "b c" $X', {"X": "d e"}) == ["a", "b c", "d", "e"]
    assert expand_word("`$A", {"A": "x"}, escape="`") == "$A"
    for bad in ("${A", "'open", "${:}", "${A:?must be set}", "${A%x}"):
        with pytest.raises(ShellError):
            expand_word(bad, {})


CONFIG_CASES = [
    ("env and substitution",
     'FROM scratch\nENV A=1 B="two words"\nENV C=${A}-$B D=${UNSET:-dflt}\nENV E f g\n',
     {"Env": [PATH, "A=1", "B=two words", "C=1-two words", "D=dflt", "E=f g"]}),
    ("labels, maintainer, user, workdir",
     'FROM scratch\nENV V=3\nLABEL a=b "c d"="e f" ver=$V\nMAINTAINER Kelsey <k@example.com>\n'
     'WORKDIR /srv\nWORKDIR app/$V\nUSER 1000:$V\n',
     {"Env": [PATH, "V=3"], "Labels": {"a": "b", "c d": "e f", "ver": "3"}, "WorkingDir": "/srv/app/3",
      "User": "1000:3"}),
    ("cmd shell form uses SHELL; entrypoint resets inherited cmd",
     'FROM scratch\nSHELL ["/bin/bash", "-xc"]\nENTRYPOINT ["/app"]\nCMD run --fast\n',
     {"Env": [PATH], "Shell": ["/bin/bash", "-xc"], "Entrypoint": ["/app"],
      "Cmd": ["/bin/bash", "-xc", "run --fast"]}),
    ("expose, volume, stopsignal, healthcheck, onbuild",
     'FROM scratch\nARG P=8080\nEXPOSE $P 53/udp 7000-7001\nVOLUME /data ["/logs"]\nVOLUME ["/x", "/y"]\n'
     'STOPSIGNAL SIGQUIT\nHEALTHCHECK --interval=30s --timeout=1m30s --retries=3 CMD ["/bin/check", "-q"]\n'
     'ONBUILD COPY . /app\n',
     {"Env": [PATH], "ExposedPorts": {"53/udp": {}, "7000/tcp": {}, "7001/tcp": {}, "8080/tcp": {}},
      "Volumes": {"/data": {}, '[/logs]': {}, "/x": {}, "/y": {}}, "StopSignal": "SIGQUIT",
      "Healthcheck": {"Test": ["CMD", "/bin/check", "-q"], "Interval": 30_000_000_000,
                      "Timeout": 90_000_000_000, "Retries": 3},
      "OnBuild": ["COPY . /app"]}),
    ("healthcheck none, shell-form healthcheck",
     "FROM scratch\nHEALTHCHECK CMD curl -f http://localhost/\nHEALTHCHECK NONE\n",
     {"Env": [PATH], "Healthcheck": {"Test": ["NONE"]}}),
]


@pytest.mark.parametrize("name,text,expected", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_config_table(name, text, expected):
    _, final, _ = plan(text)
    assert final.config.to_oci_config() == expected


def test_entrypoint_keeps_cmd_set_in_same_stage_and_base_env():
    base = ImageState.from_oci({"config": {"Env": ["PATH=/bin", "HOME=/root"], "Cmd": ["sh"],
                                           "WorkingDir": "/w"}})
    _, final, _ = plan("FROM base\nCMD [\"x\"]\nENTRYPOINT [\"e\"]\nENV PATH=$PATH:/opt\nRUN pwd\n", base=base)
    cfg = final.config.to_oci_config()
    assert cfg["Cmd"] == ["x"] and cfg["Entrypoint"] == ["e"]
    assert cfg["Env"] == ["PATH=/bin:/opt", "HOME=/root"]
    run = final.steps[-1]
    assert isinstance(run, st.RunStep) and run.workdir == "/w"
    _, final, _ = plan("FROM base\nENTRYPOINT [\"e\"]\n", base=base)
    assert "Cmd" not in final.config.to_oci_config()


def test_args_global_scope_and_build_args():
    text = ("ARG TAG=1.0\nARG UNUSED_GLOBAL\nFROM busybox:$TAG AS a\nARG TAG\nARG LOCAL=x\n"
            "RUN echo $TAG $LOCAL\nENV LOCAL=from-env\nRUN echo $LOCAL\n")
    plans, final, args = plan(text, build_args={"LOCAL": "given", "NOPE": "1"})
    assert final.base == "busybox:1.0"
    run1, run2 = [s for s in final.steps if isinstance(s, st.RunStep)]
    assert "TAG=1.0" in run1.env and "LOCAL=given" in run1.env
    assert run1.argv == ("/bin/sh", "-c", "echo $TAG $LOCAL")  # RUN is expanded by the shell
    assert "LOCAL=from-env" in run2.env and "LOCAL=given" not in run2.env
    assert args.unused() == ["NOPE"]
    # ARGs never persist into the image config
    assert all(not e.startswith(("TAG=", "LOCAL=given")) for e in final.config.env_list())
    _, final, _ = plan(text, build_args={"TAG": "2.0"})
    assert final.base == "busybox:2.0"


def test_multistage_target_and_copy_from():
    text = ("FROM busybox AS deps\nRUN touch /d\n"
            "FROM busybox AS unused\nRUN exit 1\n"
            "FROM deps AS build\nRUN touch /b\n"
            "FROM scratch\nCOPY --from=build /b /\nCOPY --from=0 /d /\nCOPY --from=other/image:1 /x /\n")
    plans, final, _ = plan(text)
    assert sorted(plans) == [0, 2, 3]  # stage 1 is not needed
    copies = [s for s in final.steps if isinstance(s, st.CopyStep)]
    assert [(c.from_stage, c.from_image) for c in copies] == [(2, None), (0, None), (None, "other/image:1")]
    assert plans[2].base == "stage:0"
    plans, final, _ = plan(text, target="build")
    assert sorted(plans) == [0, 2]


def test_copy_dest_and_flags():
    _, final, _ = plan('FROM scratch\nWORKDIR /app\nCOPY --chown=1:2 --chmod=640 a b ./\n'
                       'ADD x.tar.gz rel\nCOPY <<EOF /etc/greeting\nhi $NAME\nEOF\n',)
    c1, c2, c3 = [s for s in final.steps if isinstance(s, st.CopyStep)]
    assert c1.dest == "/app/" and c1.chown == "1:2" and c1.chmod == 0o640 and c1.sources == ("a", "b")
    assert c2.is_add and c2.dest == "/app/rel"
    assert c3.inline[0].content == b"hi \n" and c3.dest == "/etc/greeting"


def test_run_forms_and_mounts():
    _, final, _ = plan('FROM scratch\nRUN ["/bin/echo", "a b"]\n'
                       'RUN --mount=type=secret,id=npmrc --network=none cat /run/secrets/npmrc\n'
                       'RUN --mount=type=secret,id=tok,target=/root/.tok,required cat /root/.tok\n'
                       "RUN <<EOF\necho one\necho two\nEOF\n")
    r1, r2, r3, r4 = [s for s in final.steps if isinstance(s, st.RunStep)]
    assert r1.argv == ("/bin/echo", "a b")
    assert r2.network == "none" and r2.secrets[0].id == "npmrc" and r2.secrets[0].target == "/run/secrets/npmrc"
    assert r3.secrets[0].target == "/root/.tok" and r3.secrets[0].required
    assert r4.argv == ("/bin/sh", "-c", "echo one\necho two\n")


def test_run_mount_types_as_buildkit_reads_them():
    _, final, _ = plan('FROM scratch AS tools\nFROM scratch\nARG V=3\nWORKDIR /w\n'
                       'RUN --mount=type=cache,target=/root/.cache,sharing=locked,mode=0700,uid=5 a\n'
                       'RUN --mount=type=cache,id=pip-$V,target=rel,from=tools,source=/seed b\n'
                       'RUN --mount=type=bind,target=/src --mount=type=bind,from=tools,src=bin,dst=/t,rw c\n'
                       'RUN --mount=type=tmpfs,target=/tmp,size=64m --mount=type=ssh d\n'
                       'RUN --mount=type=secret,id=tok,env=TOKEN --mount=type=secret,id=k,env=K,target=/k e\n')
    r1, r2, r3, r4, r5 = [s for s in final.steps if isinstance(s, st.RunStep)]
    c = r1.mounts[0]
    assert (c.type, c.target, c.id, c.sharing, c.mode, c.uid, c.readonly) == (
        "cache", "/root/.cache", "/root/.cache", "locked", 0o700, 5, False)
    c = r2.mounts[0]
    assert (c.id, c.target, c.from_stage, c.source) == ("pip-3", "/w/rel", 0, "/seed")
    b1, b2 = r3.mounts
    assert (b1.type, b1.from_stage, b1.source, b1.readonly) == ("bind", None, "/", True)
    assert (b2.from_stage, b2.source, b2.target, b2.readonly) == (0, "/bin", "/t", False)
    t, sh = r4.mounts
    assert (t.type, t.size, t.readonly) == ("tmpfs", 64 << 20, False)
    assert (sh.type, sh.id, sh.target) == ("ssh", "default", "/run/buildkit/ssh_agent.0")
    s1, s2 = r5.secrets
    assert (s1.id, s1.env, s1.target) == ("tok", "TOKEN", "") and (s2.env, s2.target) == ("K", "/k")
    assert r1.cache_text != r2.cache_text  # mounts are part of the step's key


def test_config_steps_carry_no_layer_and_history_text():
    _, final, _ = plan("FROM scratch\nENV A=1\nRUN true\nEXPOSE 80\n")
    kinds = [type(s).__name__ for s in final.steps]
    assert kinds == ["ConfigStep", "RunStep", "ConfigStep"]
    assert final.steps[0].created_by == "ENV A=1"
    assert final.steps[1].created_by == "RUN /bin/sh -c true # buildkit"


def test_escape_directive():
    _, final, _ = plan("# escape=`\nFROM scratch\nENV A=`$x\nRUN echo a `\n  b\n")
    assert final.config.env["A"] == "$x"
    assert final.steps[-1].argv[-1].startswith("echo a")


BAD = [
    ("FROM busybox\nFOO bar\n", "Dockerfile:2: FOO: unknown instruction"),
    ("RUN echo\n", "Dockerfile:1: RUN: no build stage"),
    ("ARG X\n", "no FROM instruction"),
    ("FROM a b\n", "Dockerfile:1: FROM: FROM requires either one or three arguments"),
    ("FROM a AS x\nFROM b AS x\n", "Dockerfile:2: FROM: duplicate stage name"),
    ("FROM a\nCOPY onlyone\n", "Dockerfile:2: COPY: COPY requires at least two arguments"),
    ("FROM a\nCOPY a b c\n", "Dockerfile:2: COPY: When using COPY with more than one source file"),
    ("FROM a\nCOPY --frm=x a b\n", "Dockerfile:2: COPY: unknown flag: --frm"),
    ("FROM a\nADD https://example.com/x /x\n", "Dockerfile:2: ADD: ADD of a remote URL"),
    ("FROM a\nSHELL /bin/bash -c\n", "Dockerfile:2: SHELL: SHELL requires the arguments to be in JSON form"),
    ("FROM a\nEXPOSE http\n", "Dockerfile:2: EXPOSE: invalid containerPort: http"),
    ("FROM a\nHEALTHCHECK --interval=5x CMD true\n", "Dockerfile:2: HEALTHCHECK: --interval: invalid duration"),
    ("FROM a\nHEALTHCHECK --interval=10us CMD true\n", "cannot be less than 1ms"),
    ("FROM a\nONBUILD FROM b\n", "Dockerfile:2: ONBUILD: FROM isn't allowed as an ONBUILD trigger"),
    ("FROM a\nRUN --mount=type=cache,target=/c,size=1m make\n", "Dockerfile:2: RUN: unexpected key 'size' for mount type 'cache'"),
    ("FROM a\nRUN --mount=type=nfs,target=/c make\n", "Dockerfile:2: RUN: unsupported mount type 'nfs'"),
    ("FROM a\nRUN --mount=type=bind,target=/c,uid=1 make\n", 'uid not allowed for "bind" type mounts'),
    ("FROM a\nRUN --mount=type=tmpfs,target=/c,sharing=locked make\n", "invalid cache sharing set for tmpfs mount"),
    ("FROM a\nRUN --mount=type=cache,target=/c,sharing=wide make\n", "unsupported sharing value 'wide'"),
    ("FROM a\nRUN --mount=type=secret,id=a,from=b make\n", "secret mount should not have a from"),
    ("FROM a\nRUN --mount=type=cache,target=/ make\n", "invalid mount target"),
    ("FROM a\nRUN --mount=type=bind,target=/c,bogus=1 make\n", "unexpected key 'bogus'"),
    ("FROM a\nRUN --security=privileged make\n", "unsupported security mode"),
    ("FROM a\nRUN --network=bridge make\n", "Dockerfile:2: RUN: unsupported network mode"),
    ("FROM a\n\nENV A\n", "Dockerfile:3: ENV must have two arguments"),
    ("FROM a\nLABEL\n", "Dockerfile:2: LABEL: LABEL requires at least one argument"),
    ("FROM a\nENV A=${B\n", "Dockerfile:2: ENV: syntax error: missing '}'"),
    ("FROM a AS one\nCOPY --from=two /x /y\nFROM b AS two\nFROM one\n", "Dockerfile:2: COPY: stage 'two' is defined after"),
    ("FROM a\nCOPY --from=0 /x /y\n", "Dockerfile:2: COPY: invalid stage index 0"),
    ("FROM a\nCOPY --chmod=u+x a b\n", "Dockerfile:2: COPY: invalid --chmod=u+x"),
    ("FROM a\nSTOPSIGNAL 'bad sig'\n", "Dockerfile:2: STOPSIGNAL: invalid signal"),
    ("ARG B=\nFROM $B\n", "Dockerfile:2: FROM: base name ($B) should not be blank"),
]


@pytest.mark.parametrize("text,message", BAD)
def test_bad_dockerfiles(text, message):
    with pytest.raises(InvalidArgument) as e:
        plan(text)
    assert message in str(e.value)


def test_unknown_target():
    with pytest.raises(InvalidArgument, match="target stage 'nope' could not be found"):
        plan("FROM a\n", target="nope")


ONBUILD_BASE = {"config": {"Env": ["PATH=/bin"], "OnBuild": ["ENV A=1", "RUN echo x > /t"]}}


def test_base_onbuild_triggers_run_first_and_are_not_inherited():
    base = ImageState.from_oci(ONBUILD_BASE)
    _, final, _ = plan("FROM base\nRUN echo $A\nONBUILD RUN own\n", base=base)
    env_a, trig_run, own_run, own_onbuild = final.steps
    assert env_a.created_by == "ENV A=1"
    assert isinstance(trig_run, st.RunStep) and trig_run.argv == ("/bin/sh", "-c", "echo x > /t")
    assert "A=1" in trig_run.env  # the trigger's ENV is in effect for what follows it
    assert isinstance(own_run, st.RunStep) and "A=1" in own_run.env
    assert own_onbuild.created_by == "ONBUILD RUN own"
    cfg = final.config.to_oci_config()
    assert cfg["OnBuild"] == ["RUN own"] and "A=1" in cfg["Env"]
    _, plain, _ = plan("FROM base\n", base=base)
    assert "OnBuild" not in plain.config.to_oci_config()


def test_stage_onbuild_triggers_run_in_a_stage_built_from_it():
    plans, final, _ = plan("FROM scratch AS a\nONBUILD COPY x /x\nFROM a\nRUN true\n")
    copy, run = final.steps
    assert isinstance(copy, st.CopyStep) and copy.dest == "/x" and isinstance(run, st.RunStep)
    assert plans[0].config.to_oci_config()["OnBuild"] == ["COPY x /x"]
    assert "OnBuild" not in final.config.to_oci_config()


@pytest.mark.parametrize("trigger,message", [
    ("ONBUILD RUN x", "base ONBUILD trigger:1: ONBUILD: Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"),
    ("FROM busybox", "base ONBUILD trigger:1: ONBUILD: FROM isn't allowed as an ONBUILD trigger"),
    ("MAINTAINER me", "base ONBUILD trigger:1: ONBUILD: MAINTAINER isn't allowed as an ONBUILD trigger"),
    ("COPY onlyone", "base ONBUILD trigger:1: COPY: COPY requires at least two arguments"),
    ("BOGUS x", "base ONBUILD trigger:1: BOGUS: unknown instruction"),
])
def test_bad_base_triggers_are_refused(trigger, message):
    base = ImageState.from_oci({"config": {"OnBuild": [trigger]}})
    with pytest.raises(InvalidArgument) as e:
        plan("FROM base\n", base=base)
    assert message in str(e.value)


@pytest.mark.parametrize("text,message", [
    ("FROM a\nONBUILD ONBUILD RUN x\n", "Dockerfile:2: ONBUILD: Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"),
    ("FROM a\nONBUILD MAINTAINER me\n", "Dockerfile:2: ONBUILD: MAINTAINER isn't allowed as an ONBUILD trigger"),
])
def test_refused_onbuild_lines(text, message):
    with pytest.raises(InvalidArgument) as e:
        plan(text)
    assert message in str(e.value)
