import pytest

from evol_ray import columns as C
from evol_ray.evolve import prompts, rules


def test_rule4_copied_prompt_words():
    p = prompts.COPIED_PROMPT_PHRASES
    assert rules.copied_prompt_words("#Rewritten Prompt#: list five birds", p) == C.R_COPIED_PROMPT
    assert rules.copied_prompt_words("In the given prompt, list birds", p) == C.R_COPIED_PROMPT
    assert rules.copied_prompt_words(f"{prompts.REWRITTEN_MARKER} list birds", p) == C.R_COPIED_PROMPT
    assert rules.copied_prompt_words("List five birds that migrate over the Alps in autumn.", p) is None
    # this project's template says "the instruction below"; a real evolution talked about it
    real = "The above given instruction is marked as a request to provide a counter-narrative of a for loop"
    assert rules.copied_prompt_words(real, p) == C.R_COPIED_PROMPT
    assert rules.copied_prompt_words("Follow the steps given below and list the instructions in order.", p) is None


def test_rule2_short_apology():
    assert rules.short_apology("I'm sorry, but I can't help with that.", ["sorry"], 80) == C.R_SORRY
    long_answer = "Sorry for the long answer. " + "word " * 100
    assert rules.short_apology(long_answer, ["sorry"], 80) is None
    assert rules.short_apology("Paris is the capital of France.", ["sorry"], 80) is None
    assert rules.short_apology("SORRY.", ["sorry"], 80) == C.R_SORRY


def test_rule3_only_stopwords():
    assert rules.only_stopwords("") == C.R_STOPWORDS
    assert rules.only_stopwords("... !!! ?") == C.R_STOPWORDS
    assert rules.only_stopwords("It is what it is, and so it was.") == C.R_STOPWORDS
    assert rules.only_stopwords("It is Paris.") is None
    assert rules.only_stopwords("42") is None
    assert rules.only_stopwords("東京です") is None


def test_rule1_reads_the_judges_probability_against_the_threshold():
    assert rules.judge_says_equal(0.5, 0.5)
    assert rules.judge_says_equal(0.93, 0.5)
    assert not rules.judge_says_equal(0.49, 0.5)
    assert not rules.judge_says_equal(0.8, 0.9)


def test_clean_evolution_strips_quotes_only():
    assert rules.clean_evolution('  "List birds."  ') == "List birds."
    assert rules.clean_evolution("#Rewritten Instruction# x") == "#Rewritten Instruction# x"


NOT_INSTRUCTIONS = [
    ("Here is a more complex version of the instruction: list ten birds.", C.R_META_TALK),
    ("Sure! I made the prompt harder by adding a constraint.", C.R_META_TALK),
    ("Certainly, the task now asks for three examples.", C.R_META_TALK),
    ("This rewritten version adds a table of data.", C.R_META_TALK),
    ("Tradition Rise: The Great Baker's Mix", C.R_BARE_TITLE),
    ("The Art of Sourdough", C.R_BARE_TITLE),
    ("Quantum Entanglement and Its Discontents", C.R_BARE_TITLE),
    ("A Journey Through the Andes", C.R_BARE_TITLE),
    ("```python\ndef fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n```", C.R_ANSWERS_PARENT),
    ("A good marathon plan builds a base of 20 miles a week with a long run every weekend; most "
     "runners taper in the final two weeks.", C.R_ANSWERS_PARENT),
    ("The mitochondria is the powerhouse of the cell because it produces most of its ATP through "
     "oxidative phosphorylation.", C.R_ANSWERS_PARENT),
    ("def reverse(s):\n    return s[::-1]", C.R_ANSWERS_PARENT),
    # kept by the rule's first version in a real run of conf/local.yaml (SmolLM2-135M, round 2),
    # the parent being "Describe a typical day of a lighthouse keeper.": ", which includes" read
    # as a question
    ("A typical day for a lighthouse keeper in the Pacific Northwest involves working with the crew, "
     "preparing for the upcoming day, and dealing with the challenges of the day. The day begins early, "
     "with a day of preparing the crew, which includes checking the weather forecast, checking the state "
     "of the light, and making sure the crew is ready to go to work.", C.R_ANSWERS_PARENT),
    # answers that open with a noun spelled like a request verb: "sum up" counts, "sum" alone not
    ("Sum: 1 + 2 + 3 + 4 = 10, so the total of the four numbers is ten.", C.R_ANSWERS_PARENT),
    ("Review of The Godfather: a slow, patient film whose last hour makes up for everything before it.",
     C.R_ANSWERS_PARENT),
]

INSTRUCTIONS = [
    "Write a Python function that returns the n-th Fibonacci number in O(log n) time.",
    "Summarize this article in three bullet points.",
    "Why is the sky blue at noon but red at sunset?",
    "Given the table below, compute the average price.\n| item | price |\n| tea | 3 |",
    "Imagine you are a tour guide in Rome. Describe the Colosseum to a group of children.",
    "You are a chef. Plan a vegan menu for six guests.",
    "In 200 words, explain how vaccines train the immune system.",
    "Fix the bug in this code:\n```python\ndef f(x):\n    return x +\n```",
    "Here is a list of numbers: 4, 1, 9. Sort it in descending order.",
    "Come up with a name for a bakery that sells only rye bread.",
    "I'd like a short poem about rain in Lisbon",
    "Let's plan a menu for a birthday party of ten children",
    # verbs the first list missed (found by the labelled judge set)
    "Sum up the key points of a meeting about a product release.",
    "Proofread this paragraph and reword any sentence longer than 25 words.",
    "Please translate 'good night' into German and Japanese.",
    "Can you recommend three novels set in Lisbon",
    "Name five rivers in Africa and their lengths.",
    "Classify each review as positive or negative: <r>Great!</r><r>Awful.</r>",
    "I need a cover letter for a junior data analyst role.",
    "How does compound interest differ from simple interest",
    "Compare the French and American revolutions in their causes and outcomes.",
]


@pytest.mark.parametrize("text,reason", NOT_INSTRUCTIONS)
def test_not_an_instruction_is_named(text, reason):
    assert rules.not_an_instruction(text) == reason


@pytest.mark.parametrize("text", INSTRUCTIONS)
def test_real_instructions_pass(text):
    assert rules.not_an_instruction(text) is None


def test_every_instruction_of_the_labelled_judge_set_passes():

    from evol_ray.calibration import sets

    pairs, _, _ = sets.load(None, "judge")
    flagged = [t for p in pairs for t in (p["parent"], p["evolution"]) if rules.not_an_instruction(t)]
    assert flagged == []


# --- the recipes' rules (evol_ray/evolve/recipe_rules.py) ---------------------------------------
ASKS_FOR_CODE = [
    "Write a function that returns the n-th prime.",
    "Implement a stack class with push, pop and peek.",
    "Fix the bug in this code:\nfor i in range(10) print(i)",
    "Create a SQL query that lists customers with more than three orders.",
    "Write a regex that matches a UK postcode.",
    "Please write this in Python: read a CSV file and print the sum of its second column.",
    "Refactor the following JavaScript so that it uses async/await.",
    "Rewrite this loop as a list comprehension.",
]
NO_CODE_ASKED = [
    "Explain what a hash table is.",
    "What is the time complexity of binary search?",
    "Explain how this function works: def f(x): return x * 2",
    "Compare Python and Java for teaching beginners.",
    "Name three famous computer scientists.",
]
HAS_CODE = [
    "```python\ndef reverse(s):\n    return s[::-1]\n```",
    "Here it is:\n~~~\nSELECT name FROM customers;\n~~~",
    "def reverse(s):\n    return s[::-1]",
    "function add(a, b) {\n  return a + b;\n}",
    "SELECT name FROM customers WHERE orders > 3;",
    "Use this:\nresult = sorted(items, key=len)\nprint(result)",
    "#include <stdio.h>\nint main() { printf(\"hi\"); return 0; }",
]
PROSE_ONLY = [
    "To reverse a string, walk over its characters from the end and collect them in a new string.",
    "You can use a loop. First, read the file. Then add up the values of the second column.\nFinally print the total.",
    "A stack is a last-in, first-out structure: push puts an item on top and pop takes it off.",
    "",
]


@pytest.mark.parametrize("text", ASKS_FOR_CODE)
def test_code_requests_are_recognized(text):
    from evol_ray.evolve.recipe_rules import asks_for_code
    assert asks_for_code(text)


@pytest.mark.parametrize("text", NO_CODE_ASKED)
def test_questions_about_code_do_not_ask_for_code(text):
    from evol_ray.evolve.recipe_rules import answer_without_code, asks_for_code
    assert not asks_for_code(text)
    assert answer_without_code(text, PROSE_ONLY[0]) is None  # prose is a fine answer there


@pytest.mark.parametrize("answer", HAS_CODE)
def test_an_answer_with_code_passes_the_code_rule(answer):
    from evol_ray.evolve.recipe_rules import answer_without_code
    assert answer_without_code(ASKS_FOR_CODE[0], answer) is None


@pytest.mark.parametrize("answer", PROSE_ONLY)
def test_a_prose_answer_to_a_code_task_is_named(answer):
    from evol_ray.evolve.recipe_rules import answer_without_code
    assert answer_without_code("Write a function that reverses a string.", answer) == C.R_NO_CODE


@pytest.mark.parametrize("answer, reason", [
    ("Tom has 5 apples left.", None),
    ("He ends with twelve marbles.", None),
    ("Half of the cake is left.", None),
    ("He has some apples, but not many.", C.R_NO_NUMBER),
    ("", C.R_NO_NUMBER),
])
def test_math_answer_needs_a_number(answer, reason):
    from evol_ray.evolve.recipe_rules import answer_without_number
    assert answer_without_number(answer) == reason
