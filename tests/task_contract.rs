//! Helpers shared by the task test modules (`tasks_common`, `tasks_probes`): the golden text of a
//! task and its examples, and the thread-count check of the generation contract.
use tasks::{generate, generate_range, Example, Split, Task};

/// The golden text of `t`: its config and metadata, then its first `n` test examples, each shown
/// with the `targets` line the calling module renders for it.
pub fn golden_text(
    t: &dyn Task,
    n: u64,
    targets: impl Fn(&dyn Task, &Example) -> String,
) -> String {
    let mut text = format!(
        "config: {}\nvocab_size: {}  max_len: {}  eos: {:?}  chance: {}  metric: {:?}\n",
        t.config(),
        t.vocab_size(),
        t.max_len(),
        t.eos_id(),
        t.chance(),
        t.metric()
    );
    for i in 0..n {
        let ex = generate(t, Split::Test, i);
        text.push_str(&format!(
            "--- test #{i}\nprompt: {}\nanswer: {}\n{}prompt_len: {}  len: {}  redraws: {}\ntokens: {:?}\nmeta: {}\n",
            t.render(ex.prompt()),
            t.render(ex.answer()),
            targets(t, &ex),
            ex.prompt_len,
            ex.tokens.len(),
            ex.redraws,
            ex.tokens,
            serde_json::to_string(&ex.meta).unwrap()
        ));
    }
    text
}

/// The first `n` examples of every split are the same bytes on 1, 2 and 4 rayon threads.
pub fn assert_thread_independent(name: &str, t: &dyn Task, n: u64) {
    let pool = |k| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(k)
            .build()
            .unwrap()
    };
    let (one, two, four) = (pool(1), pool(2), pool(4));
    for split in Split::ALL {
        let a = one.install(|| generate_range(t, split, 0, n));
        assert_eq!(a.len() as u64, n);
        let ja = serde_json::to_string(&a).unwrap();
        for (k, p) in [(2, &two), (4, &four)] {
            let b = p.install(|| generate_range(t, split, 0, n));
            assert!(
                ja == serde_json::to_string(&b).unwrap(),
                "{name} {split}: output differs between 1 and {k} threads"
            );
        }
    }
}
