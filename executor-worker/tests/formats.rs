//! What the tests may do with the program across the process boundary, per format:
//! HumanEval `check(candidate)`, generic test programs, setup code, callbacks, handles
//! to the program's objects, exceptions, the data types that travel by value. Each case
//! states whether it must pass; a wrong program must fail the same tests.

mod common;

use tgrpo_executor::proto::{RewardKind, ScaledReward, ScoreRequest, Verdict};
use tgrpo_executor::{ExecutorConfig, Scorer, requests};

struct Case {
    name: &'static str,
    request: ScoreRequest,
    expected: Verdict,
}

fn mbpp(name: &'static str, code: &str, tests: &[&str], expected: Verdict) -> Case {
    Case {
        name,
        request: requests::mbpp(name, code, tests.iter().copied(), ""),
        expected,
    }
}

fn cases() -> Vec<Case> {
    use Verdict::{Error, Failed, Passed};
    let humaneval_test = "\
METADATA = {'author': 'x'}
import math

def check(candidate):
    assert candidate([1.0, 2.0, 3.0], 0.5) == False
    assert candidate([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3) == True
    assert abs(len([x for x in [0.5] if candidate([x, 0.6], 0.2)]) - 1) < 1e-6
";
    let humaneval_ok = "\
def has_close_elements(numbers, threshold):
    for i, a in enumerate(numbers):
        for j, b in enumerate(numbers):
            if i != j and abs(a - b) < threshold:
                return True
    return False
";
    let humaneval_wrong = "def has_close_elements(numbers, threshold):\n    return False\n";
    let generic_test = "\
def helper(n):
    return [stack_sum(list(range(k))) for k in range(n)]

assert helper(4) == [0, 0, 1, 3]
try:
    stack_sum(None)
    raise AssertionError('expected a TypeError')
except TypeError:
    pass
";
    let classes = "\
class Pair:
    def __init__(self, a, b):
        self.a = a
        self.b = b
    def total(self):
        return self.a + self.b
    def __repr__(self):
        return 'Pair(%d, %d)' % (self.a, self.b)
def longest_chain(pairs, n):
    pairs = sorted(pairs, key=lambda p: p.b)
    count, end = 0, float('-inf')
    for p in pairs:
        if p.a > end:
            count, end = count + 1, p.b
    return count
";
    let mut cases = vec![
        Case {
            name: "humaneval-ok",
            request: requests::humaneval("he", humaneval_ok, humaneval_test, "has_close_elements"),
            expected: Passed,
        },
        Case {
            name: "humaneval-wrong",
            request: requests::humaneval(
                "he",
                humaneval_wrong,
                humaneval_test,
                "has_close_elements",
            ),
            expected: Failed,
        },
        Case {
            name: "generic-ok",
            request: requests::generic(
                "g",
                "def stack_sum(xs):\n    return sum(xs)\n",
                [generic_test],
            ),
            expected: Passed,
        },
        Case {
            name: "generic-wrong",
            request: requests::generic(
                "g",
                "def stack_sum(xs):\n    return 0 if xs is None else sum(xs)\n",
                [generic_test],
            ),
            expected: Failed,
        },
        Case {
            name: "setup-code-builds-program-objects",
            request: requests::mbpp(
                "setup",
                classes,
                [
                    "assert longest_chain(pairs, 4) == 3",
                    "assert pairs[0].total() == 29",
                    "assert repr(pairs[1]) == 'Pair(15, 25)'",
                ],
                "pairs = [Pair(5, 24), Pair(15, 25), Pair(27, 40), Pair(50, 60)]",
            ),
            expected: Passed,
        },
        mbpp(
            "objects-built-by-the-test",
            classes,
            &[
                "assert longest_chain([Pair(5, 24), Pair(15, 25), Pair(27, 40), Pair(50, 60)], 4) == 3",
                "assert Pair(1, 2).a == 1 and isinstance(Pair(1, 2), Pair)",
                "assert str(Pair(3, 4)) == 'Pair(3, 4)'",
            ],
            Passed,
        ),
        mbpp(
            "callbacks-from-the-test",
            "def apply_all(xs, fn):\n    return [fn(x) for x in xs]\ndef sort_by(xs, key):\n    return sorted(xs, key=key)\n",
            &[
                "assert apply_all([1, 2, 3], lambda x: x * 10) == [10, 20, 30]",
                "assert sort_by(['bb', 'a', 'ccc'], len) == ['a', 'bb', 'ccc']",
                "assert sort_by([3, 1, 2], key=lambda x: -x) == [3, 2, 1]",
            ],
            Passed,
        ),
        mbpp(
            "generators-and-iterators",
            "def evens(n):\n    for i in range(n):\n        if i % 2 == 0:\n            yield i\ndef pairs(n):\n    return zip(range(n), range(n))\n",
            &[
                "assert list(evens(10)) == [0, 2, 4, 6, 8]",
                "assert sum(evens(1000)) == 249500",
                "assert 4 in evens(10) and 5 not in evens(10)",
                "assert dict(pairs(3)) == {0: 0, 1: 1, 2: 2}",
            ],
            Passed,
        ),
        mbpp(
            "data-types-travel-by-value",
            "import collections, decimal, fractions\n\
             def kinds():\n    \
                 return (None, True, 2**100, -7, 1.5, float('inf'), complex(1, 2), 'é\\u2603', b'\\x00\\xff',\n            \
                         bytearray(b'ab'), [1, [2]], (3,), {1: 'a', (2, 3): [4]}, {5, 6}, frozenset({7}),\n            \
                         decimal.Decimal('1.10'), fractions.Fraction(3, 4), collections.deque([1, 2], 5),\n            \
                         collections.OrderedDict(a=1), collections.Counter('aab'), collections.defaultdict(list, {1: [2]}),\n            \
                         range(1, 10, 2))\n\
             Point = collections.namedtuple('Point', 'x y')\n\
             def point():\n    return Point(1, 2)\n",
            &[
                "import collections, decimal, fractions\n\
                 expected = (None, True, 2**100, -7, 1.5, float('inf'), complex(1, 2), 'é\\u2603', b'\\x00\\xff',\n            \
                             bytearray(b'ab'), [1, [2]], (3,), {1: 'a', (2, 3): [4]}, {5, 6}, frozenset({7}),\n            \
                             decimal.Decimal('1.10'), fractions.Fraction(3, 4), collections.deque([1, 2], 5),\n            \
                             collections.OrderedDict(a=1), collections.Counter('aab'), collections.defaultdict(list, {1: [2]}),\n            \
                             range(1, 10, 2))\n\
                 got = kinds()\n\
                 assert got == expected\n\
                 assert [type(a) for a in got] == [type(e) for e in expected]",
                "assert point() == (1, 2)",
            ],
            Passed,
        ),
        mbpp(
            "program-exceptions-reach-the-test",
            "def safe_div(a, b):\n    if b == 0:\n        raise ZeroDivisionError('no')\n    return a / b\nclass Custom(Exception):\n    pass\ndef boom():\n    raise Custom('custom')\n",
            &[
                "try:\n    safe_div(1, 0)\n    assert False\nexcept ZeroDivisionError as e:\n    assert str(e) == 'no'",
                "try:\n    boom()\n    assert False\nexcept Exception as e:\n    assert 'custom' in str(e)",
            ],
            Passed,
        ),
        mbpp(
            "math-module-is-the-tests-own",
            "import math\ndef area(r):\n    return math.pi * r * r\n",
            &[
                "assert math.isclose(area(2), 12.566370614359172)",
                "assert round(area(1), 4) == 3.1416",
            ],
            Passed,
        ),
        mbpp(
            "program-globals-visible-to-tests",
            "R = 3\ntable = {'a': 1}\ndef get(k):\n    return table[k]\n",
            &[
                "assert R == 3 and get('a') == 1",
                "assert table == {'a': 1}",
            ],
            Passed,
        ),
        mbpp(
            "builtin-named-function-under-test",
            "def sum(a, b):\n    return a - b\n",
            &["assert sum(10, 4) == 6"],
            Passed,
        ),
        mbpp(
            "always-equal-object",
            "class Any:\n    def __eq__(self, other):\n        return True\ndef f(x):\n    return Any()\n",
            &["assert f(1) == 2"],
            Failed,
        ),
        mbpp(
            "handle-comparisons-are-the-programs",
            "class V:\n    def __init__(self, x):\n        self.x = x\n    def __eq__(self, other):\n        return isinstance(other, V) and self.x == other.x\n    def __add__(self, other):\n        return V(self.x + other.x)\n",
            &[
                "assert V(1) + V(2) == V(3)",
                "assert V(1) != V(2)",
                "assert (V(1) + V(2)).x == 3",
            ],
            Passed,
        ),
        mbpp(
            "syntax-error",
            "def f(:\n    pass\n",
            &["assert f() is None"],
            Error,
        ),
        mbpp(
            "program-raises-at-import",
            "import does_not_exist\ndef f():\n    return 1\n",
            &["assert f() == 1"],
            Error,
        ),
        mbpp(
            "test-that-does-not-compile-fails-alone",
            "def f():\n    return 1\n",
            &["assert f() == 1", "assert f( == 1"],
            Failed,
        ),
        mbpp(
            "undefined-name-in-test",
            "def f():\n    return 1\n",
            &["assert g() == 1"],
            Failed,
        ),
    ];
    cases.push(mbpp(
        "threads-and-forks-work",
        "import threading, os\n\
         def threaded():\n    \
             out = []\n    \
             t = threading.Thread(target=lambda: out.append(1))\n    \
             t.start()\n    \
             t.join()\n    \
             return out\n\
         def forked():\n    \
             r, w = os.pipe()\n    \
             if os.fork() == 0:\n        \
                 os.write(w, b'hi')\n        \
                 os._exit(0)\n    \
             os.wait()\n    \
             return os.read(r, 2)\n",
        &["assert threaded() == [1]", "assert forked() == b'hi'"],
        Passed,
    ));
    cases.push(mbpp(
        "large-and-deep-values",
        "import sys\nsys.setrecursionlimit(5000)\n\
         def big(n):\n    return list(range(n))\n\
         def depth(n):\n    return 0 if n == 0 else 1 + depth(n - 1)\n\
         def nested(n):\n    x = []\n    for _ in range(n):\n        x = [x]\n    return x\n",
        &[
            "assert big(200000) == list(range(200000))",
            "assert depth(3000) == 3000",
            "assert nested(50) == eval('[' * 51 + ']' * 51)",
        ],
        Passed,
    ));
    // Set iteration order as in one CPython process (MBPP 341 relies on it).
    cases.push(mbpp(
        "set-order-as-in-cpython",
        "def to_tuple(s):\n    return tuple(s)\n",
        &["assert to_tuple({12, 13, 14, 15, 16}) == (16, 12, 13, 14, 15)"],
        Passed,
    ));
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn formats_and_cross_process_semantics() {
    let scorer = Scorer::local(common::config(2)).await.unwrap();
    let cases = cases();
    let responses = scorer
        .score_many(cases.iter().map(|case| case.request.clone()).collect())
        .await
        .unwrap();
    let mut wrong = Vec::new();
    for (case, response) in cases.iter().zip(&responses) {
        if response.verdict() != case.expected {
            wrong.push(format!(
                "{}: expected {:?}, got {:?}: {} {:?}",
                case.name,
                case.expected,
                response.verdict(),
                response.detail,
                response.tests
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let syntax = responses
        .iter()
        .zip(&cases)
        .find(|(_, case)| case.name == "syntax-error")
        .unwrap()
        .0;
    assert!(syntax.syntax_error);
    scorer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewards_per_request() {
    let scorer = Scorer::local(common::config(1)).await.unwrap();
    let half = |kind: RewardKind| {
        let mut request = requests::mbpp(
            "half",
            "def f(x):\n    return 1\n",
            ["assert f(1) == 1", "assert f(2) == 2"],
            "",
        );
        request.reward_kind = kind as i32;
        request
    };
    assert_eq!(
        scorer.score(half(RewardKind::Binary)).await.unwrap().reward,
        0.0
    );
    assert_eq!(
        scorer
            .score(half(RewardKind::Partial))
            .await
            .unwrap()
            .reward,
        0.5
    );
    let mut scaled = half(RewardKind::Scaled);
    scaled.scaled = Some(ScaledReward {
        pass_weight: Some(2.0),
        ..ScaledReward::default()
    });
    assert_eq!(scorer.score(scaled).await.unwrap().reward, 1.0);
    let mut timeout = requests::mbpp("t", "while True:\n    pass\n", ["assert True"], "");
    timeout.reward_kind = RewardKind::Scaled as i32;
    timeout.timeout_s = Some(0.5);
    let response = scorer.score(timeout).await.unwrap();
    assert_eq!(response.verdict(), Verdict::Timeout);
    assert_eq!(
        response.reward,
        ExecutorConfig::default().scaled_reward.timeout_penalty
    );
    scorer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_mode_still_scores_and_cleans_up() {
    let config = ExecutorConfig {
        unsafe_no_sandbox: true,
        ..common::config(1)
    };
    let scorer = Scorer::local(config).await.unwrap();
    assert!(!scorer.isolation().unwrap().sandboxed);
    let response = scorer
        .score(requests::mbpp(
            "u",
            "import os\ndef here():\n    open('scratch.txt', 'w').write('x')\n    return os.getcwd()\n",
            ["assert here().startswith('/tmp/tgrpo-exec-')"],
            "",
        ))
        .await
        .unwrap();
    assert_eq!(response.verdict(), Verdict::Passed, "{}", response.detail);
    let wrong = scorer
        .score(requests::mbpp(
            "w",
            "def f():\n    return 1\n",
            ["assert f() == 2"],
            "",
        ))
        .await
        .unwrap();
    assert_eq!(wrong.verdict(), Verdict::Failed);
    scorer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_interpreter_refuses_to_start() {
    let config = ExecutorConfig {
        python: "/bin/false".into(),
        ..common::config(1)
    };
    let err = Scorer::local(config).await.unwrap_err().to_string();
    assert!(err.contains("slot 0"), "{err}");
}
