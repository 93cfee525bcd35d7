"""Rule-based augmentation of a dataset file of your own (llm_fft.augment)."""

from llm_fft.augment import reword_pairs, rewordings, statements_from_answers, too_close


def test_korean_question_endings_are_reworded_by_the_final_consonant():
    assert rewordings("등대의 높이는 얼마인가요?") == [  # 마: no final consonant
        "등대의 높이는 얼마예요?", "등대의 높이는 얼마야?", "등대의 높이는 얼마인지 알려 주세요.", "등대의 높이는 얼마인지 궁금해요."]
    assert rewordings("섬의 인구는 몇 명이에요?") == [  # 명: a final consonant
        "섬의 인구는 몇 명인가요?", "섬의 인구는 몇 명이야?", "섬의 인구는 몇 명인지 알려 주세요.", "섬의 인구는 몇 명인지 궁금해요."]
    # A verb or an adjective: only …니? fits both (여는지 would, 높는지 would not).
    assert rewordings("빵집은 몇 시에 문을 여나요?") == ["빵집은 몇 시에 문을 여니?"]
    assert rewordings("등대는 높나요?") == ["등대는 높니?"]
    assert rewordings("저건 고양이야?") == []  # 고양이 + 야 or 고양 + 이야: not split without a dictionary
    # After a digit the copula's form is unknown: only the forms that fit any noun.
    assert rewordings("가장 큰 방은 101호입니까?")[:1] == ["가장 큰 방은 101호인가요?"]
    assert rewordings("최고 기록은 2024인가요?") == ["최고 기록은 2024인지 알려 주세요.", "최고 기록은 2024인지 궁금해요."]
    assert too_close("섬의 인구는 몇 명이에요?", ["섬의 인구는 몇 명인가요?"]) and not too_close("섬의 인구는?", ["등대는 몇 미터?"])


def test_english_wh_questions_are_reworded_and_other_forms_are_left_alone():
    assert rewordings("What is the name of the bakery?") == [
        "Tell me what the name of the bakery is.", "Do you know what the name of the bakery is?",
        "I'd like to know what the name of the bakery is.", "What's the name of the bakery?"]
    assert rewordings("How much is a ticket?")[0] == "Tell me how much a ticket is."
    assert rewordings("Who was the first teacher?")[1] == "Do you know who the first teacher was?"
    assert rewordings("How many floors are there?") == []  # "how many X": not one of the forms
    # A passive keeps its participle last, which the rule cannot move: left alone.
    assert rewordings("When was the library built?") == rewordings("What is it called?") == []
    assert rewordings("Which is the largest room?") == []  # "which" as the subject
    assert rewordings("When did the library open?") == []
    assert rewordings("우리 빵집의 이름은?") == []


def test_rewordings_never_repeat_a_question_nor_copy_an_evaluation_one_and_every_drop_is_counted():
    pairs = [{"question": "축제는 언제인가요?", "answer": "8월입니다."},
             {"question": "축제는 언제예요?", "answer": "8월입니다."},
             {"question": "What is the name of the bakery?", "answer": "Moonlight Bakery."},
             {"question": "When did it open?", "answer": "In 1998."}]
    evaluation = ["축제는 언제인지 궁금해요.", "Tell me what the name of this bakery is."]
    added, report = reword_pairs(pairs, 4, [p["question"] for p in pairs] + evaluation, evaluation)
    assert [p["question"] for p in added] == ["축제는 언제야?", "축제는 언제인지 알려 주세요.",
                                              "Do you know what the name of the bakery is?",
                                              "I'd like to know what the name of the bakery is.",
                                              "What's the name of the bakery?"]
    assert [p["answer"] for p in added] == ["8월입니다."] * 2 + ["Moonlight Bakery."] * 3
    # 언제예요 / 언제인가요 are each other's rewording, the held-out one is never trained on, the second
    # pair's 언제야 / 알려 주세요 were made by the first already; "Tell me what …" is a near-copy of the dev
    # question.
    assert report == {"accepted": 5, "rejected": {"already a question": 6, "no rule for the question's ending": 1,
                                                  "too close to a dev, held-out or unknown question": 1}}
    assert len(reword_pairs(pairs[:1], 1, [pairs[0]["question"]], [])[0]) == 1


def test_each_answer_becomes_one_statement():
    pairs = [{"question": "a?", "answer": "달빛제과입니다."}, {"question": "b?", "answer": "달빛제과입니다"},
             {"question": "c?", "answer": "아침 7시에 엽니다."}]
    assert statements_from_answers(pairs) == [{"text": "달빛제과입니다."}, {"text": "아침 7시에 엽니다."}]
