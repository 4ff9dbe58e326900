//! The `model` binary: `logits` writes HF-exact `logits` (and `mtp_logits` for MTP
//! checkpoints); `info` and `random-checkpoint` run; errors are one line with a non-zero exit.

use std::process::Command;

use candle_core::Device;
use fixtures::{assert_close, Case};

fn model_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_model"))
}

fn tmp(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("model-cli-{name}-{}", std::process::id()))
}

#[test]
fn logits_command_writes_logits_and_mtp_logits() {
    let case = Case::load("v3_mtp");
    let ids: Vec<String> = case.ids("input_ids").iter().map(u32::to_string).collect();
    let out = tmp("logits.safetensors");
    let status = model_bin()
        .args(["logits", "--model"])
        .arg(&case.dir)
        .args(["--tokens", &ids.join(","), "--out"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let t = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    assert_close(
        &t["logits"],
        &case.tensor("prefill.logits"),
        1e-4,
        "cli logits",
    );
    assert_close(
        &t["mtp_logits"],
        &case.tensor("mtp.logits"),
        1e-4,
        "cli mtp_logits",
    );
    let _ = std::fs::remove_file(out);
}

#[test]
fn info_and_random_checkpoint_run() {
    let case = Case::load("v2_greedy");
    let out = model_bin()
        .args(["info", "--model"])
        .arg(&case.dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("KV cache per token") && text.contains("parameters"),
        "{text}"
    );
    // A GGUF file: its configuration, and its tensors by type.
    let gguf = fixtures::fixtures_dir().join("gguf/v2_group_limited-Q8_0.gguf");
    let out = model_bin()
        .args(["info", "--model"])
        .arg(&gguf)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && text.contains("KV cache per token")
            && text.contains("q8_0 (held as q8)"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let dir = tmp("random");
    let _ = std::fs::remove_dir_all(&dir);
    let status = model_bin()
        .args(["random-checkpoint", "--config"])
        .arg(case.dir.join("config.json"))
        .arg("--out")
        .arg(&dir)
        .args(["--dtype", "fp8"])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(dir.join("model.safetensors.index.json").is_file());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn errors_are_one_line_with_nonzero_exit() {
    let runs: [&[&str]; 3] = [
        &[
            "logits",
            "--model",
            "/nonexistent/dir",
            "--tokens",
            "1",
            "--out",
            "/tmp/x.safetensors",
        ],
        &["info", "--model", "/nonexistent/dir"],
        &["generate", "--model", "/nonexistent/dir", "--prompt", "hi"],
    ];
    for args in runs {
        let out = model_bin().args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.starts_with("error: ") && err.contains("/nonexistent/dir"),
            "{err}"
        );
    }
}

/// `logits` and `generate` on a DeepSeek-V3.2 checkpoint (sparse attention through the indexer).
#[test]
fn logits_and_generate_run_on_v32() {
    let case = Case::load("v32_dsa");
    let ids: Vec<String> = case.ids("input_ids").iter().map(u32::to_string).collect();
    let out = tmp("v32-logits.safetensors");
    let status = model_bin()
        .args(["logits", "--model"])
        .arg(&case.dir)
        .args(["--tokens", &ids.join(","), "--out"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let t = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    assert_close(
        &t["logits"],
        &case.tensor("prefill.logits"),
        1e-4,
        "cli V3.2 logits",
    );
    let _ = std::fs::remove_file(out);
    let gen = model_bin()
        .args(["generate", "--model"])
        .arg(&case.dir)
        .arg("--tokenizer")
        .arg(fixtures::fixtures_dir().join("tiny_tokenizer"))
        .args([
            "--prompt",
            "a prompt longer than index_topk",
            "--max-tokens",
            "12",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&gen.stderr);
    assert!(gen.status.success(), "{err}");
    assert!(err.contains("generated "), "{err}");
    let info = model_bin()
        .args(["info", "--model"])
        .arg(&case.dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(
        info.status.success() && text.contains("V32") && text.contains("top-8 keys per query"),
        "{text}"
    );
}

/// `--sparse`: parsed and applied (a window over the whole prompt is dense attention), bad
/// specs and V3.2 checkpoints refused in one line.
#[test]
fn sparse_option_applies_and_refuses_bad_input() {
    let case = Case::load("v3_noaux");
    let ids: Vec<String> = case.ids("input_ids").iter().map(u32::to_string).collect();
    let out = tmp("sparse-logits.safetensors");
    let status = model_bin()
        .args(["logits", "--model"])
        .arg(&case.dir)
        .args([
            "--sparse",
            "local:16,random:2",
            "--tokens",
            &ids.join(","),
            "--out",
        ])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let t = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    assert_close(
        &t["logits"],
        &case.tensor("prefill.logits"),
        1e-4,
        "--sparse covering the prompt",
    );
    let _ = std::fs::remove_file(out);
    let v32 = Case::load("v32_dsa");
    for (dir, sparse, want) in [
        (&case.dir, "local:0", "window"),
        (&case.dir, "dense:3", "not a pattern"),
        (&v32.dir, "local:4", "V3.2"),
    ] {
        let run = model_bin()
            .args(["logits", "--model"])
            .arg(dir)
            .args([
                "--sparse",
                sparse,
                "--tokens",
                "1,2",
                "--out",
                "/tmp/x.safetensors",
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success(), "{sparse}");
        assert!(err.contains(want), "{sparse}: {err}");
    }
}

/// `generate --chat` with `--system` and `--chat-template`: the file's template renders the
/// messages (the prompt's token count follows what it renders); an unreadable or invalid
/// template fails in one line naming it, and both flags need `--chat`.
#[test]
fn generate_takes_a_system_message_and_a_chat_template() {
    let case = Case::load("v3_noaux");
    let template = tmp("template.jinja");
    std::fs::write(
        &template,
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}",
    )
    .unwrap();
    let run = |extra: &[&str]| {
        let out = model_bin()
            .args(["generate", "--model"])
            .arg(&case.dir)
            .arg("--tokenizer")
            .arg(fixtures::fixtures_dir().join("tiny_tokenizer"))
            .args(["--prompt", "two plus two", "--max-tokens", "2"])
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let prompt_tokens = |err: &str| -> usize {
        let at = err.find("prompt ").expect(err) + "prompt ".len();
        err[at..].split(' ').next().unwrap().parse().unwrap()
    };
    let path = template.to_str().unwrap();
    let (ok, plain) = run(&["--chat", "--chat-template", path]);
    assert!(ok, "{plain}");
    let system = "you are a careful calculator, answer in digits";
    let (ok, with_system) = run(&["--chat", "--chat-template", path, "--system", system]);
    assert!(ok, "{with_system}");
    assert!(prompt_tokens(&with_system) > prompt_tokens(&plain) + 5);

    std::fs::write(&template, "{% for m in messages %}").unwrap();
    for args in [
        vec!["--chat", "--chat-template", path],
        vec!["--chat", "--chat-template", "/nonexistent/t.jinja"],
    ] {
        let (ok, err) = run(&args);
        assert!(!ok && err.trim().lines().count() == 1, "{err}");
        assert!(
            err.contains("--chat-template") && err.contains(args[2]),
            "{err}"
        );
    }
    let (ok, err) = run(&["--system", "s"]);
    assert!(!ok && err.contains("--chat"), "{err}");
    let _ = std::fs::remove_file(template);
}
