from evol_ray import columns as C
from evol_ray.evolve import prompts, rules


def test_rule4_copied_prompt_words():
    p = prompts.COPIED_PROMPT_PHRASES
    assert rules.copied_prompt_words("#Rewritten Prompt#: list five birds", p) == C.R_COPIED_PROMPT
    assert rules.copied_prompt_words("In the given prompt, list birds", p) == C.R_COPIED_PROMPT
    assert rules.copied_prompt_words(f"{prompts.REWRITTEN_MARKER} list birds", p) == C.R_COPIED_PROMPT
    assert rules.copied_prompt_words("List five birds that migrate over the Alps in autumn.", p) is None


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


def test_rule1_reads_the_forced_choice():
    assert rules.judge_says_equal("Equal")
    assert rules.judge_says_equal(" Equal\n")
    assert not rules.judge_says_equal("Not Equal")
    assert not rules.judge_says_equal("Not ")


def test_clean_evolution_strips_quotes_only():
    assert rules.clean_evolution('  "List birds."  ') == "List birds."
    assert rules.clean_evolution("#Rewritten Instruction# x") == "#Rewritten Instruction# x"
