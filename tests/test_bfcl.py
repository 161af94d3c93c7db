"""The bfcl task: loading BFCL's files, BFCL's AST rules on hand-written completions, per-category accuracy.

Most tests use tests/fixtures/bfcl (real BFCL rows, copied). With bfcl-eval installed, the last
tests read the package's own files and compare every verdict with BFCL's own checker.
"""

from __future__ import annotations

import importlib.util
import json
import random
import sys
import types
from pathlib import Path

import pytest

from r3rl.tasks import available_tasks, load_task
from r3rl.tasks.base import group_accuracy
from r3rl.tasks.bfcl import BFCLTask, category_accuracy, to_openai_tool
from r3rl.tasks.bfcl_ast import standardize_string
from r3rl.tasks.data import DataError

FIXTURE = Path(__file__).parent / "fixtures" / "bfcl"


@pytest.fixture(scope="module")
def task() -> BFCLTask:
    return load_task("bfcl", path=str(FIXTURE))


@pytest.fixture(scope="module")
def rows(task) -> dict[str, dict]:
    return {ex["id"]: ex for ex in task.load_examples("test")}


# ------------------------------------------------------------------------- loading
def test_registered_and_loads_every_category(task, rows):
    assert available_tasks()["bfcl"] == "r3rl.tasks.bfcl:BFCLTask"
    counts = {}
    for ex in rows.values():
        counts[ex["category"]] = counts.get(ex["category"], 0) + 1
    assert counts == {"simple": 3, "multiple": 2, "parallel": 2, "parallel_multiple": 2, "live_simple": 1,
                      "live_multiple": 1, "live_parallel": 1, "live_parallel_multiple": 1}
    assert task.breakdown(rows["simple_python_0"]) == "simple"
    assert task.example_id(rows["live_parallel_0-0-0"]) == "live_parallel_0-0-0"


def test_categories_option_and_splits():
    t = BFCLTask(categories="simple, parallel", path=str(FIXTURE))
    assert {ex["category"] for ex in t.load_examples("test")} == {"simple", "parallel"}
    assert BFCLTask(categories=["simple_python"], path=str(FIXTURE)).categories == ("simple",)
    with pytest.raises(ValueError, match="unknown BFCL categories \\['irrelevance'\\]"):
        BFCLTask(categories="simple,irrelevance")
    with pytest.raises(ValueError, match="evaluation benchmark.*test_fraction"):
        t.load_examples("train")
    held = BFCLTask(path=str(FIXTURE), test_fraction=0.5)
    train, test = held.load_examples("train"), held.load_examples("test")
    assert len(train) + len(test) == 13 and train and test and not {e["id"] for e in train} & {e["id"] for e in test}


def test_missing_data_says_what_to_do(tmp_path):
    with pytest.raises(DataError, match="does not exist; install BFCL's data with `pip install --no-deps bfcl-eval=="):
        BFCLTask(path=str(tmp_path / "nope")).load_examples("test")
    with pytest.raises(DataError, match="no BFCL_v<N>_simple_python.json in"):
        BFCLTask(path=str(tmp_path)).load_examples("test")
    (tmp_path / "BFCL_v4_simple_python.json").write_text((FIXTURE / "BFCL_v4_simple_python.json").read_text())
    with pytest.raises(DataError, match="possible_answer"):
        BFCLTask(categories="simple", path=str(tmp_path)).load_examples("test")
    (tmp_path / "possible_answer").mkdir()
    (tmp_path / "possible_answer" / "BFCL_v4_simple_python.json").write_text(
        '{"id": "simple_python_0", "ground_truth": [{"not_offered": {}}]}\n')
    with pytest.raises(DataError, match="id simple_python_0: ground-truth function 'not_offered' is not among"):
        BFCLTask(categories="simple", path=str(tmp_path)).load_examples("test")


def test_newest_file_version_wins(tmp_path):
    for version, answer in (("3", 99), ("4", 10)):
        (tmp_path / "possible_answer").mkdir(exist_ok=True)
        row = json.loads((FIXTURE / "BFCL_v4_simple_python.json").read_text().splitlines()[0])
        (tmp_path / f"BFCL_v{version}_simple_python.json").write_text(json.dumps(row) + "\n")
        truth = {"id": row["id"], "ground_truth": [{"calculate_triangle_area": {"base": [answer], "height": [5]}}]}
        (tmp_path / "possible_answer" / f"BFCL_v{version}_simple_python.json").write_text(json.dumps(truth) + "\n")
    (ex,) = BFCLTask(categories="simple", path=str(tmp_path)).load_examples("test")
    assert ex["ground_truth"][0]["calculate_triangle_area"]["base"] == [10]


def test_tools_and_messages(task, rows):
    ex = rows["live_multiple_0-0-0"]
    tools = task.tools(ex)
    assert [t["function"]["name"] for t in tools] == ["ChaFod", "ChaDri.change_drink"]
    params = tools[1]["function"]["parameters"]
    assert params["type"] == "object" and params["required"] == ["new_preferences"]
    assert params["properties"]["new_preferences"]["type"] == "object"  # BFCL "dict"
    float_tool = to_openai_tool({"name": "f", "parameters": {"type": "dict", "properties": {
        "r": {"type": "float"}, "xs": {"type": "tuple", "items": {"type": "float"}}, "a": {"type": "any"}}}})
    props = float_tool["function"]["parameters"]["properties"]
    assert props == {"r": {"type": "number"}, "xs": {"type": "array", "items": {"type": "number"}}, "a": {"type": "string"}}
    msgs = task.messages(rows["simple_python_0"])
    assert msgs[0]["role"] == "system" and msgs[1] == {"role": "user", "content": task.prompt(rows["simple_python_0"])}
    with_system = dict(rows["simple_python_0"], messages=[{"role": "system", "content": "Be brief."},
                                                          {"role": "user", "content": "q"}])
    msgs = task.messages(with_system)
    assert [m["role"] for m in msgs] == ["system", "user"] and msgs[0]["content"].endswith("\n\nBe brief.")


# --------------------------------------------------------------- BFCL's AST rules
def py(*calls: str) -> str:
    return "[" + ", ".join(calls) + "]"


VERDICTS = [
    # simple: any listed value; an optional parameter ("" listed) may be omitted or given
    ("simple_python_0", py("calculate_triangle_area(base=10, height=5)"), True, "all calls match"),
    ("simple_python_0", py("calculate_triangle_area(base=10, height=5, unit='units')"), True, "match"),
    ("simple_python_0", py("calculate_triangle_area(base=10, height=5, unit='Units')"), True, "match"),  # case
    ("simple_python_0", '{"name": "calculate_triangle_area", "arguments": {"base": 10, "height": 5}}', True, "match"),
    ("simple_python_0", '<tool_call>{"name": "calculate_triangle_area", "arguments": {"base": 10, "height": 5}}'
                        '</tool_call>', True, "match"),
    ("simple_python_0", py("calculate_triangle_area(base=10, height=5, unit='cm')"), False,
     "value_error:string: Invalid value for parameter 'unit': 'cm'. Expected one of ['units', '']"),
    ("simple_python_0", py("calculate_triangle_area(base=10)"), False,
     "simple_function_checker:missing_required: Missing required parameter: 'height'."),
    ("simple_python_0", py("calculate_triangle_area(base=10, height=5, color='red')"), False,
     "simple_function_checker:unexpected_param: Unexpected parameter: 'color'."),
    ("simple_python_0", py("calculate_triangle_area(base=10.0, height=5)"), False,
     "type_error:simple: Incorrect type for parameter 'base'. Expected type integer, got float."),
    ("simple_python_0", py("calculate_triangle_area(base='10', height=5)"), False, "type_error:simple"),
    ("simple_python_0", py("calculate_triangle_area(base=11, height=5)"), False,
     "value_error:others: Invalid value for parameter 'base': 11. Expected one of [10]."),
    ("simple_python_0", py("calculate_triangle_area(base=10, height=5)", "calculate_triangle_area(base=10, height=5)"),
     False, "simple_function_checker:wrong_count: Wrong number of functions: expected 1 call, got 2."),
    ("simple_python_0", "The area is 25.", False, "wrong_count: Wrong number of functions: expected 1 call, got 0."),
    ("simple_python_0", py("calculate_triangle_area(base=__import__('os').getpid(), height=5)"), False,
     "ast_decoder:decoder_failed: could not parse tool calls"),
    ("simple_python_1", py("math.factorial(number=5)"), True, "match"),
    ("simple_python_1", '[{"name": "math_factorial", "arguments": {"number": 5}}]', True, "match"),  # OpenAI-safe name
    ("simple_python_1", py("math.gamma(number=5)"), False,
     "simple_function_checker:wrong_func_name: Function name 'math.factorial' not found in model output"),
    ("simple_python_2", py("math.hypot(x=4, y=5, z=0)"), True, "match"),
    ("simple_python_2", py("math.hypot(x=4, y=5, z=1)"), False, "Invalid value for parameter 'z': 1"),
    # multiple: one call, checked against the expected one among several functions
    ("multiple_0", py("triangle_properties.get(side1=5, side2=4, side3=3, get_area=True)"), True, "match"),
    ("multiple_0", py("triangle_properties.get(side1=5, side2=4, side3=3, get_area=1)"), False,
     "Incorrect type for parameter 'get_area'. Expected type boolean, got int."),
    ("multiple_0", py("circle_properties.get(radius=5.0)"), False, "wrong_func_name"),
    ("multiple_1", py("math.triangle_area_heron(side1=3, side2=4, side3=5)", "math.circle_area(radius=1.0)"), False,
     "multiple_function_checker:wrong_count: Wrong number of functions: expected 1 calls, got 2."),
    # parallel: every answer matched by a distinct call, in any order
    ("parallel_0", py("spotify.play(artist='Maroon 5', duration=15)", "spotify.play(artist='Taylor Swift', duration=20)"),
     True, "match"),
    ("parallel_0", py("spotify.play(artist='taylor swift', duration=20)", "spotify.play(artist='Maroon5', duration=15)"),
     True, "match"),  # BFCL's string standardisation
    ("parallel_0", py("spotify.play(artist='Taylor Swift', duration=20)", "spotify.play(artist='Taylor Swift', duration=20)"),
     False, "parallel_function_checker_no_order:cannot_find_match: No call matches possible answer #2 ('spotify.play')."
            " First difference: value_error:string: Invalid value for parameter 'artist'"),
    ("parallel_0", py("spotify.play(artist='Taylor Swift', duration=20)"), False,
     # BFCL's own name for this check (bfcl_eval ast_checker.parallel_function_checker_no_order)
     "parallel_function_checker_no_order:wrong_count: Wrong number of functions: expected 2 calls, got 1."),
    ("parallel_1", '{"name": "calculate_em_force", "arguments": {"b_field": 5, "area": 2, "d_time": 10}}\n'
                   '{"name": "calculate_em_force", "arguments": {"b_field": 5, "area": 2, "d_time": 4}}', True, "match"),
    # parallel_multiple, with list and optional values
    ("parallel_multiple_0", py("math_toolkit.product_of_primes(count=5)",
                               "math_toolkit.sum_of_multiples(lower_limit=1, upper_limit=1000, multiples=[3, 5])"),
     True, "match"),
    ("parallel_multiple_0", py("math_toolkit.product_of_primes(count=5)",
                               "math_toolkit.sum_of_multiples(lower_limit=1, upper_limit=1000, multiples=[5, 3])"),
     False, "value_error:list/tuple: Invalid value for parameter 'multiples': [5, 3]"),
    ("parallel_multiple_26", py("bank.get_transaction_history(account='00125648', days=7)",
                                "bank.calculate_balance(account='00125648')"), True, "match"),
    ("parallel_multiple_26", py("bank.get_transaction_history(account='00125648', days=7)",
                                "bank.calculate_balance(account='00125648', transactions=[], starting_balance=0)"),
     True, "match"),  # an int where a float is declared; [] where "" is listed
    # live: dict parameters, and several values allowed per key
    ("live_parallel_multiple_0-0-0",
     py("ChaFod(foodItem='Caesar salad', removeIngredients='anchovy')",
        "ChaDri.change_drink(drink_id='123', new_preferences={'size': 'large', 'temperature': 'hot', "
        "'sweetness_level': 'regular', 'milk_type': 'almond'})"), True, "match"),
    ("live_parallel_multiple_0-0-0",
     py("ChaFod(foodItem='Caesar salad', removeIngredients='anchovy')",
        "ChaDri.change_drink(drink_id='123', new_preferences={'size': 'small', 'temperature': 'hot', "
        "'milk_type': 'almond'})"), False, "value_error:dict_value: Invalid value for parameter 'size': 'small'"),
    ("live_parallel_multiple_0-0-0",
     py("ChaFod(foodItem='Caesar salad', removeIngredients='anchovy')",
        "ChaDri.change_drink(drink_id='123', new_preferences={'size': 'large', 'temperature': 'hot'})"), False,
     "value_error:dict_key: Missing dict key parameter: 'milk_type'."),
    ("live_parallel_0-0-0", py("get_current_weather(location='Shanghai, China')",
                               "get_current_weather(location='Beijing, China', unit='fahrenheit')"), True, "match"),
]


@pytest.mark.parametrize(("row", "completion", "ok", "reason"), VERDICTS)
def test_bfcl_rules(task, rows, row, completion, ok, reason):
    verdict = task.verify(rows[row], completion)
    assert verdict.ok is ok, verdict
    assert reason in verdict.reason, verdict
    # The failure class is BFCL's error type, the reason's prefix; a pass has none.
    expected_class = verdict.reason.split(": ", 1)[0] if not ok else ""
    assert verdict.failure_class == expected_class
    assert ok or expected_class in task.failure_classes


def test_standardize_string_is_bfcls():
    assert standardize_string("April 1, 2024") == standardize_string("april 1 2024") == "april12024"
    assert standardize_string("it's") == 'it"s'


# ------------------------------------------------------------- per-category accuracy
def episode(group, ok1, ok2=False):
    return {"group": group, "attempt_ok": ok1, "retry_ok": ok2}


def test_category_accuracy_by_hand():
    eps = ([episode("simple", True)] * 3 + [episode("simple", False, True)]  # simple 3/4, 4/4 within a retry
           + [episode("multiple", True), episode("multiple", False)]  # 1/2
           + [episode("live_simple", True)] * 1 + [episode("live_simple", False)] * 3  # 1/4
           + [episode("live_multiple", True)] * 6 + [episode("live_multiple", False, True)] * 2  # 6/8, 8/8
           + [{"attempt_ok": True}])  # no group: ignored
    got = category_accuracy(eps)
    assert got["groups"]["simple"] == {"n": 4, "acc@1": 0.75, "acc@2": 1.0}
    assert got["groups"]["multiple"] == {"n": 2, "acc@1": 0.5, "acc@2": 0.5}
    # Non-Live: unweighted mean of the categories present, (0.75 + 0.5) / 2; BFCL would show N/A (2 of 4)
    assert got["non_live_ast"] == {"acc@1": 0.625, "acc@2": 0.75, "n": 6, "complete": False}
    # Live: weighted by size, (1 + 6) / 12 and (1 + 8) / 12
    assert got["live_ast"]["acc@1"] == pytest.approx(7 / 12) and got["live_ast"]["acc@2"] == pytest.approx(9 / 12)
    assert got["live_ast"]["n"] == 12 and not got["live_ast"]["complete"]
    assert group_accuracy(eps) == got["groups"] | {}  # the generic per-group figures are the same numbers


def test_task_summarize_from_verdicts(task, rows):
    """Episodes as the evaluator writes them, from real verdicts: the summary counts the verdicts."""
    answers = {"simple_python_0": py("calculate_triangle_area(base=10, height=5)"),
               "simple_python_1": py("math.factorial(number=6)"),
               "parallel_0": py("spotify.play(artist='Maroon 5', duration=15)", "spotify.play(artist='Taylor Swift', duration=20)")}
    eps = [{"group": task.breakdown(rows[i]), "attempt_ok": task.verify(rows[i], text).ok, "retry_ok": False}
           for i, text in answers.items()]
    summary = task.summarize(eps)
    assert summary["groups"] == {"parallel": {"n": 1, "acc@1": 1.0, "acc@2": 1.0},
                                 "simple": {"n": 2, "acc@1": 0.5, "acc@2": 0.5}}
    assert summary["non_live_ast"]["acc@1"] == 0.75 and "live_ast" not in summary


def test_base_task_has_no_breakdown():
    assert load_task("countdown", n_train=0, n_test=0).breakdown({"nums": [1], "target": 1}) is None


# --------------------------------------------------- the installed package's own files
def _installed_task() -> BFCLTask:
    if importlib.util.find_spec("bfcl_eval") is None:
        pytest.skip("bfcl-eval is not installed (pip install --no-deps bfcl-eval==2026.3.23)")
    return BFCLTask()


def test_reads_the_real_bfcl_files():
    counts: dict[str, int] = {}
    for ex in _installed_task().load_examples("test"):
        counts[ex["category"]] = counts.get(ex["category"], 0) + 1
    assert counts == {"simple": 400, "multiple": 200, "parallel": 200, "parallel_multiple": 200, "live_simple": 258,
                      "live_multiple": 1053, "live_parallel": 16, "live_parallel_multiple": 24}


def _bfcl_checker():
    """BFCL's own ast_checker, imported without its API-client dependencies (one config module stubbed)."""
    stub = types.ModuleType("bfcl_eval.constants.model_config")
    stub.MODEL_CONFIG_MAPPING = {"r3rl": types.SimpleNamespace(underscore_to_dot=False)}
    saved = sys.modules.get(stub.__name__)
    sys.modules[stub.__name__] = stub
    try:
        from bfcl_eval.constants.enums import Language
        from bfcl_eval.eval_checker.ast_eval.ast_checker import ast_checker
    except ImportError as e:
        pytest.skip(f"BFCL's checker cannot be imported here: {e}")
    finally:
        if saved is None:
            sys.modules.pop(stub.__name__, None)
    return ast_checker, Language.PYTHON


def _first(options):
    """A concrete value from a list of possible values: the first that is not the optional mark ""."""
    if not isinstance(options, list):
        return options, True
    picked = next((v for v in options if v != ""), None)
    return _concrete(picked), picked is not None


def _concrete(value):
    if isinstance(value, dict):
        return {k: v for k, (v, ok) in ((k, _first(o)) for k, o in value.items()) if ok}
    return [_concrete(v) for v in value] if isinstance(value, list) else value


def _answers(ex, rng: random.Random) -> list[list[dict]]:
    """The first listed answer, and perturbations of it that a model might write."""
    base = []
    for call in ex["ground_truth"]:
        (name, params), = call.items()
        base.append({"name": name, "arguments": {p: v for p, (v, ok) in ((p, _first(o)) for p, o in params.items()) if ok}})
    variants = [base, list(reversed(base)), base[:-1], base + base[:1]]
    for _ in range(4):
        changed = json.loads(json.dumps(base))
        call = rng.choice(changed)
        if call["arguments"]:
            key = rng.choice(sorted(call["arguments"]))
            value = call["arguments"][key]
            call["arguments"][key] = rng.choice([
                None, 7, 7.5, True, "Other", [], {}, str(value).upper(), str(value) + " x",
                value if not isinstance(value, int) or isinstance(value, bool) else float(value)])
            if rng.random() < 0.3:
                del call["arguments"][key]
        else:
            call["arguments"]["extra"] = 1
        variants.append(changed)
    return variants


def test_verdicts_agree_with_bfcls_own_checker():
    """Every real row, with its first listed answer and eight perturbations: same verdict as BFCL's ast_checker,
    and on a failure the same error type (r3rl's failure class)."""
    task = _installed_task()
    ast_checker, python = _bfcl_checker()
    rng = random.Random(0)
    checked = passed = 0
    disagreements = []
    for ex in task.load_examples("test"):
        category = "simple_python" if ex["category"] == "simple" else ex["category"]
        for calls in _answers(ex, rng):
            text = json.dumps(calls)
            model_output = [{c["name"]: c["arguments"]} for c in calls]
            try:
                result = ast_checker(ex["functions"], model_output, ex["ground_truth"], python, category, "r3rl")
            except (KeyError, TypeError, IndexError, AttributeError):
                continue  # BFCL's checker crashes on this input; ours must still answer (checked below)
            theirs = result["valid"]
            ours = task.verify(ex, text)
            checked += 1
            passed += ours.ok
            if ours.ok != theirs:
                disagreements.append((ex["id"], text[:200], theirs, ours.reason))
            elif not theirs and ours.failure_class != result["error_type"]:  # the failure class is BFCL's error type
                disagreements.append((ex["id"], text[:200], result["error_type"], ours.failure_class))
    assert checked > 15_000 and 2_000 < passed < checked - 5_000
    assert not disagreements, disagreements[:5]


# ------------------------------------------------------------------ through r3rl eval
def test_evaluate_reports_bfcl_categories(tmp_path, task):
    """evaluate_model() with a scripted model: right answers for the simple rows only; results.json has BFCL's figures."""
    from r3rl.config import Config
    from r3rl.demo.tiny import build_tokenizer
    from r3rl.engine.scripted import ScriptedEngine
    from r3rl.environment.rollout import Rollout
    from r3rl.evaluation.accuracy import evaluate_model
    from r3rl.reporting.console_tables import group_table

    right = {"Find the area of a triangle": py("calculate_triangle_area(base=10, height=5)"),
             "Calculate the factorial of 5": py("math.factorial(number=5)"),
             "hypotenuse of a right triangle": py("math.hypot(x=4, y=5)")}

    def scr(prompt, j):
        user_turns = prompt.count("<|im_start|>user")
        for question, answer in right.items():
            if question in prompt and user_turns == 1:
                return answer
        return "I am not sure." if user_turns == 1 else "I should call the tool."

    cfg = Config()
    cfg.task.name = "bfcl"
    cfg.eval.num_examples, cfg.eval.samples_per_example = 100, 1
    roll = Rollout(ScriptedEngine(build_tokenizer(), scr), task, cfg.generation, cfg.rollout)
    res = evaluate_model(roll, cfg.eval, cfg.seed, output_dir=tmp_path, show_progress=False)
    assert res.trials == 13 and res.value("acc@1") == pytest.approx(3 / 13)
    by_group = json.loads((tmp_path / "results.json").read_text())["by_group"]
    assert by_group["groups"]["simple"] == {"n": 3, "acc@1": 1.0, "acc@2": 1.0}
    assert by_group["groups"]["live_parallel"] == {"n": 1, "acc@1": 0.0, "acc@2": 0.0}
    assert by_group["non_live_ast"] == {"acc@1": 0.25, "acc@2": 0.25, "n": 9, "complete": True}  # (1 + 0 + 0 + 0) / 4
    assert by_group["live_ast"]["acc@1"] == 0.0 and by_group["live_ast"]["n"] == 4
    episodes = [json.loads(x) for x in (tmp_path / "episodes.jsonl").read_text().splitlines()]
    assert {e["group"] for e in episodes} == set(by_group["groups"])
    table = group_table(res)
    assert table is not None and table.row_count == 8 + 2
