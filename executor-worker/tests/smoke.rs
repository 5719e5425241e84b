mod common;

use tgrpo_executor::proto::Verdict;
use tgrpo_executor::{Scorer, requests};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke() -> anyhow::Result<()> {
    let scorer = Scorer::local(common::config(2)).await?;
    println!("{}", scorer.isolation().unwrap());
    let ok = scorer
        .score(requests::mbpp(
            "ok",
            "def f(x):\n    return x + 1\n",
            ["assert f(1) == 2", "assert f(2) == 4"],
            "",
        ))
        .await?;
    println!("{ok:?}");
    assert_eq!(ok.verdict(), Verdict::Failed);
    assert_eq!(ok.tests_passed, 1);
    Ok(())
}
