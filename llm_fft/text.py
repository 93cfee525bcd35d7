"""The one text normaliser: every comparison of answers, questions and continuations goes through it."""


def normalize(text):
    """Whitespace collapsed, trailing sentence punctuation dropped: `서울 입니다.` == `서울 입니다`."""
    return " ".join(text.split()).rstrip(".!?。")
