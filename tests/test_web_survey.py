"""The web survey page (`links.web`, `/s/<token>`) over HTTP, as a browser without JavaScript
uses it: consent, the questionnaire with back and skip, the same rules as in chat, forms that
cannot be forged or replayed, and the pages that say why there is nothing to answer. On
SQLite and PostgreSQL.
"""

from __future__ import annotations

import io
from datetime import timedelta
from types import MappingProxyType
from typing import Any

import pytest
import segno
from aiohttp import ClientResponse
from sqlalchemy import select

from bot.config import SettingsError, load_settings
from bot.http.api import openapi_document
from bot.jobs.sweeps import survey_sweep
from handlers import escalations, survey_answers, web_survey
from handlers.questionnaire import Question, Questionnaire, load_questionnaire
from storage.models import Answer, AuditEntry, Escalation, OutboxMessage, Survey
from tests.api_support import (
    Api,
    MakeApi,
    api_fixture,  # noqa: F401
    assert_documented,
    case_body,
    make_api_fixture,  # noqa: F401
    resolved_body,
    response_spec,
    telegram_link,
    web_link,
)
from tests.web_support import Page, WebCitizen

CODE = "000.00.12.H26-261122-0001"
TELEGRAM_TOKEN = "123456:TEST-token"


async def resolved_case(api: Api, code: str = CODE, **changes: Any) -> WebCitizen:
    await api.post_json(case_body(code, **changes), 201)
    view = await api.post_json({**resolved_body(code), **changes}, 200)
    return WebCitizen(api.client, view["links"]["web"])


async def survey_row(api: Api) -> Survey:
    survey = await api.scalar(select(Survey))
    assert survey is not None
    return survey


async def all_of(api: Api, query: Any) -> list[Any]:
    async with api.services.sessions() as session:
        return list((await session.execute(query)).scalars().all())


async def answer_count(api: Api) -> int:
    return await api.count(Answer)


async def agree(citizen: WebCitizen) -> Page:
    consent = await citizen.open()
    assert consent.status == 200 and consent.labels == ["Đồng ý", "Từ chối"]
    return await citizen.press(consent, "Đồng ý")


# --- links and the pages before and after ----------------------------------------------------


async def test_the_case_view_links_the_web_page_with_the_same_token(api: Api) -> None:
    view = await api.post_json(case_body(), 201)
    token = view["links"]["telegram"].split("start=", 1)[1]
    assert view["links"] == {"telegram": telegram_link(token), "web": web_link(token)}
    assert list(view["links"]) == ["telegram", "web"]
    response = await api.get(f"/api/v1/cases/{CODE}")
    assert (await response.json())["links"]["web"] == web_link(token)


async def test_the_link_follows_the_public_url(make_api: MakeApi) -> None:
    api = await make_api(public_url="https://dichvucong.example.gov.vn/sipas/")
    view = await api.post_json(case_body(), 201)
    assert view["links"]["web"].startswith("https://dichvucong.example.gov.vn/sipas/s/")


async def test_before_resolution_the_page_says_it_is_not_time_yet(api: Api) -> None:
    view = await api.post_json(case_body(), 201)
    citizen = WebCitizen(api.client, view["links"]["web"])
    page = await citizen.open()
    assert page.status == 200 and page.lang == "vi"
    assert "chưa được giải quyết xong" in page.text and CODE in page.text
    assert not page.has_form
    await api.post_json(case_body(status="withdrawn"), 200)
    page = await citizen.open()
    assert "đã được rút" in page.text and not page.has_form


async def test_an_unknown_or_malformed_link_gets_a_human_404(api: Api) -> None:
    for path in ("/s/NoSuchTokenAtAll", "/s/bad%20token", "/s/" + "x" * 65):
        response = await api.client.get(path)
        assert response.status == 404, path
        assert response.content_type == "text/html"
        html = await response.text()
        assert "không tìm thấy hồ sơ" in html and "Traceback" not in html
    response = await api.client.post("/s/NoSuchTokenAtAll", data={"choice": "agree"})
    assert response.status == 404


async def test_the_page_carries_no_script_and_forbids_framing(api: Api) -> None:
    citizen = await resolved_case(api)
    response = await api.client.get(citizen.path)
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert "script-src" not in response.headers["Content-Security-Policy"]  # default-src 'none'
    assert "<script" not in (await response.text()).lower()


# --- the whole survey --------------------------------------------------------------------------


async def test_a_whole_survey_with_back_and_skip_and_a_comment(make_api: MakeApi) -> None:
    api = await make_api(telegram_token=TELEGRAM_TOKEN)
    citizen = await resolved_case(api)
    consent = await citizen.open()
    assert "Nghị định 13/2023/NĐ-CP" in consent.text
    assert "Đăng ký khai sinh" in consent.text
    assert "UBND quận Long Biên" in consent.text and "23/11/2026" in consent.text

    page = await citizen.press(consent, "Đồng ý")
    assert page.status == 200 and "Câu 1/7" in page.text
    assert [label[0] for label in page.labels] == ["1", "2", "3", "4", "5"]
    assert page.labels[4] == "5 - Rất hài lòng"
    assert "« Quay lại" not in page.labels
    page = await citizen.press(page, "2")
    assert "Câu 2/7" in page.text and "« Quay lại" in page.labels
    page = await citizen.press(page, "« Quay lại")
    assert "Câu 1/7" in page.text
    assert "5 - Rất hài lòng" in page.labels
    page = await citizen.press(page, "5")
    for score in ("4", "4", "1"):
        page = await citizen.press(page, score)
    assert "Câu 5/7" in page.text and "Bỏ qua" in page.labels  # optional question
    page = await citizen.press(page, "Bỏ qua")
    assert "Câu 6/7" in page.text and page.labels[:2] == ["Có", "Không"]
    page = await citizen.press(page, "Không")
    assert "Câu 7/7" in page.text and {"Gửi", "Bỏ qua", "« Quay lại"} <= set(page.labels)
    thanks = await citizen.press(page, "Gửi", text="  Phải chờ rất lâu, cán bộ không hướng dẫn.  ")
    assert thanks.status == 200 and not thanks.has_form and not thanks.buttons
    assert "Xin cảm ơn Ông/Bà đã dành thời gian trả lời" in thanks.text
    assert "người đứng đầu UBND quận Long Biên" in thanks.text

    view = await (await api.get(f"/api/v1/cases/{CODE}")).json()
    assert view["survey"]["status"] == "completed"
    assert view["survey"]["channel"] == "web"
    assert view["survey"]["answers"] == {
        "access": 5,
        "procedure": 4,
        "civil_servant": 4,
        "result": 1,
        "informal_payment": "no",
        "comment": "Phải chờ rất lâu, cán bộ không hướng dẫn.",
    }
    # The low rating reaches the head of the unit on Telegram, through the outbox.
    assert [e["reason"] for e in view["escalations"]] == ["low_rating"]
    cards = [
        row.payload
        for row in await all_of(
            api,
            select(OutboxMessage).where(
                OutboxMessage.channel == "telegram", OutboxMessage.address == "901"
            ),
        )
    ]
    assert len(cards) == 1
    for card in cards:
        assert CODE in card["text"] and "Phải chờ rất lâu" in card["text"]
        assert [b["label"] for row in card["buttons"] for b in row] == ["Tiếp nhận", "Đã xử lý"]
    # Consent on the web is on record, without personal data.
    consent_entry = await api.scalar(select(AuditEntry).where(AuditEntry.action == "consent"))
    assert consent_entry.actor == "web" and consent_entry.entity == "survey"

    # Finished: the thanks, never the form again.
    again = await citizen.open()
    assert again.status == 200 and not again.has_form and "Xin cảm ơn" in again.text


async def test_a_survey_with_nothing_to_complain_about_opens_no_escalation(api: Api) -> None:
    citizen = await resolved_case(api)
    page = await agree(citizen)
    for _ in range(5):
        page = await citizen.press(page, "5")
    page = await citizen.press(page, "Không")
    thanks = await citizen.press(page, "Gửi", text="")  # an empty comment is a skip
    assert "Xin cảm ơn" in thanks.text and "người đứng đầu" not in thanks.text
    assert await api.count(Escalation) == 0
    answers = (await (await api.get(f"/api/v1/cases/{CODE}")).json())["survey"]["answers"]
    assert "comment" not in answers and answers["feedback_handling"] == 5


async def test_declining_stores_nothing_and_the_link_still_works(api: Api) -> None:
    citizen = await resolved_case(api)
    consent = await citizen.open()
    declined = await citizen.press(consent, "Từ chối")
    assert declined.status == 200 and "không đồng ý" in declined.text and not declined.has_form
    survey = await survey_row(api)
    assert survey.status == "scheduled" and survey.channel is None
    assert await api.count(AuditEntry) == 0
    assert (await citizen.open()).labels == ["Đồng ý", "Từ chối"]


# --- forms that change nothing -------------------------------------------------------------------


async def test_a_forged_form_changes_nothing_and_says_why(api: Api) -> None:
    citizen = await resolved_case(api)
    consent = await citizen.open()
    nonce, _, signature = consent.hidden["csrf"].partition(".")
    forged = [
        consent.form("Đồng ý", csrf=f"{nonce}.{'0' * len(signature)}"),
        consent.form("Đồng ý", csrf=""),
        consent.form("Đồng ý", step="0"),  # the token was issued for consent, not a question
        {"choice": "agree"},
    ]
    for data in forged:
        page = await citizen.send(data)
        assert page.status == 403, data
        assert "không phải do trang lấy ý kiến cấp" in page.text and not page.has_form
    assert (await survey_row(api)).status == "scheduled"

    page = await citizen.press(consent, "Đồng ý")
    forged_answer = page.form("5", csrf=consent.hidden["csrf"])  # another step's token
    refused = await citizen.send(forged_answer)
    assert refused.status == 403 and "Không có gì thay đổi" in refused.text
    assert await answer_count(api) == 0 and (await survey_row(api)).position == 0


async def test_a_replayed_or_stale_form_changes_nothing(api: Api) -> None:
    citizen = await resolved_case(api)
    first = await agree(citizen)
    second = await citizen.press(first, "3")
    assert "Câu 2/7" in second.text

    # The first question's form again (a double submit, or the browser's back button).
    stale = await citizen.send(first.form("1"))
    assert stale.status == 403 and "không còn mở" in stale.text
    assert (await survey_row(api)).position == 1
    assert (await api.scalar(select(Answer.value_int))) == 3

    # Back to the first question: its old form is for the open question again, but spent.
    back = await citizen.press(second, "« Quay lại")
    assert "Câu 1/7" in back.text
    replayed = await citizen.send(first.form("1"))
    assert replayed.status == 403 and "đã được gửi trước đó" in replayed.text
    assert (await api.scalar(select(Answer.value_int))) == 3
    assert "Câu 2/7" in (await citizen.press(back, "4")).text
    assert (await api.scalar(select(Answer.value_int))) == 4


async def test_a_choice_the_question_does_not_offer_is_refused(api: Api) -> None:
    citizen = await resolved_case(api)
    page = await agree(citizen)
    for value in ("6", "0", "y", "skip", "back", "text", ""):
        refused = await citizen.send({**page.hidden, "choice": value})
        assert refused.status == 400, value
        assert "không có trong các lựa chọn" in refused.text
    assert await answer_count(api) == 0
    assert "Câu 2/7" in (await citizen.press(page, "4")).text


async def test_a_finished_survey_refuses_every_form(api: Api) -> None:
    citizen = await resolved_case(api)
    page = await agree(citizen)
    for _ in range(5):
        page = await citizen.press(page, "4")
    page = await citizen.press(page, "Không")
    last = page
    await citizen.press(page, "Bỏ qua")
    for data in (last.form("Gửi", text="again"), last.form("Bỏ qua")):
        refused = await citizen.send(data)
        assert refused.status == 403 and "đã trả lời khảo sát cho hồ sơ này rồi" in refused.text
        assert not refused.has_form
    assert (
        "comment"
        not in (await (await api.get(f"/api/v1/cases/{CODE}")).json())["survey"]["answers"]
    )


# --- the link's life ---------------------------------------------------------------------------


async def test_the_link_expires_with_the_survey(api: Api) -> None:
    citizen = await resolved_case(api)
    page = await agree(citizen)
    survey = await survey_row(api)
    assert survey.expires_at is not None
    api.clock.set(survey.expires_at - timedelta(seconds=1))
    page = await citizen.press(page, "5")
    assert "Câu 2/7" in page.text
    api.clock.set(survey.expires_at)
    expired = await citizen.open()
    assert expired.status == 410 and "đã kết thúc" in expired.text and not expired.has_form
    refused = await citizen.send(page.form("5"))
    assert refused.status == 410 and await answer_count(api) == 1
    # Once the sweep has marked it, the same.
    assert await survey_sweep(api.services) == 1
    assert (await survey_row(api)).status == "expired"
    assert (await citizen.open()).status == 410


async def test_an_opted_out_citizen_is_not_asked(api: Api) -> None:
    citizen = await resolved_case(api)
    async with api.services.sessions.begin() as session:
        survey = (await session.execute(select(Survey))).scalar_one()
        survey.status = "opted_out"
    page = await citizen.open()
    assert page.status == 200 and "không nhận khảo sát" in page.text and not page.has_form


async def test_a_citizen_whose_chat_is_unreachable_can_still_answer_on_the_web(api: Api) -> None:
    citizen = await resolved_case(api)
    async with api.services.sessions.begin() as session:
        (await session.execute(select(Survey))).scalar_one().status = "unreachable"
    page = await agree(citizen)
    assert "Câu 1/7" in page.text
    assert (await survey_row(api)).status == "in_progress"


# --- the same survey in chat and on the web ----------------------------------------------------


async def test_a_survey_in_progress_in_chat_continues_on_the_web(api: Api) -> None:
    citizen = await resolved_case(api)
    async with api.services.sessions.begin() as session:
        survey = (await session.execute(select(Survey))).scalar_one()
        survey.status, survey.channel, survey.address, survey.position = (
            "in_progress",
            "telegram",
            "5551001",
            2,
        )
    page = await agree(citizen)
    assert "Câu 3/7" in page.text
    survey = await survey_row(api)
    assert (survey.channel, survey.address, survey.status) == ("web", None, "in_progress")


# --- language -----------------------------------------------------------------------------------


async def test_vietnamese_by_default_english_on_request_or_for_an_english_citizen(
    api: Api,
) -> None:
    citizen = await resolved_case(api)
    page = await citizen.open()
    assert page.lang == "vi" and "Xin chào Ông/Bà" in page.text
    page = await citizen.open(lang="en")
    assert page.lang == "en" and page.labels == ["Agree", "Decline"]
    assert "Decree 13/2023/NĐ-CP" in page.text
    question = await citizen.press(page, "Agree")
    assert question.lang == "en" and "Question 1/7" in question.text
    assert question.labels[0] == "1 - Very dissatisfied"
    # The chosen language stays with the survey.
    assert (await citizen.open()).lang == "en"
    assert (await citizen.open(lang="vi")).labels[0] == "1 - Rất không hài lòng"

    english = await resolved_case(
        api,
        "E-1",
        citizen={"name": "John Smith", "phone": "0987654321", "locale": "en"},
    )
    assert (await english.open()).lang == "en"


async def test_a_default_locale_of_english_is_honoured(make_api: MakeApi) -> None:
    api = await make_api(locale="en")
    view = await api.post_json(case_body(citizen={"name": "A"}), 201)
    page = await WebCitizen(api.client, view["links"]["web"]).open()
    assert page.lang == "en" and "has not been resolved yet" in page.text


# --- the QR code ----------------------------------------------------------------------------------


def qr_png(link: str) -> bytes:
    buffer = io.BytesIO()
    segno.make(link, error="m").save(buffer, kind="png", scale=8, border=2)
    return buffer.getvalue()


async def test_the_qr_code_opens_the_web_page_by_default(make_api: MakeApi) -> None:
    api = await make_api()
    api.services.link_builders.pop("telegram")  # no chat channel at all: it still works
    view = await api.post_json(case_body(), 201)
    response = await api.get(f"/api/v1/cases/{CODE}/qr.png")
    assert response.status == 200
    assert await response.read() == qr_png(view["links"]["web"])


async def test_the_qr_code_opens_the_chat_when_asked(make_api: MakeApi) -> None:
    api = await make_api(telegram_token=TELEGRAM_TOKEN, qr_target="telegram")
    view = await api.post_json(case_body(), 201)
    response = await api.get(f"/api/v1/cases/{CODE}/qr.png")
    assert await response.read() == qr_png(view["links"]["telegram"])
    # While the chat link cannot be made (the bot's name is not known yet), the web page.
    api.services.link_builders["telegram"] = lambda token: None
    response = await api.get(f"/api/v1/cases/{CODE}/qr.png")
    assert await response.read() == qr_png(view["links"]["web"])


def test_the_qr_target_setting_is_checked() -> None:
    assert load_settings().qr_target == "web"
    with pytest.raises(SettingsError, match=r"SIPAS_QR_TARGET: 'sms' is not allowed"):
        load_settings(qr_target="sms")
    with pytest.raises(SettingsError, match=r"SIPAS_QR_TARGET=zalo needs SIPAS_ZALO_TOKEN"):
        load_settings(qr_target="zalo")
    with pytest.raises(SettingsError, match=r"SIPAS_QR_TARGET=telegram needs SIPAS_TELEGRAM"):
        load_settings(qr_target="telegram")
    assert load_settings(qr_target="telegram", telegram_token=TELEGRAM_TOKEN).qr_target == (
        "telegram"
    )


# --- other questionnaires ----------------------------------------------------------------------


async def test_the_national_form_is_answered_the_same_way(make_api: MakeApi) -> None:
    api = await make_api(questionnaire="sipas-2023")
    citizen = await resolved_case(api)
    page = await agree(citizen)
    total = len(load_questionnaire("sipas-2023"))
    for number in range(1, total + 1):
        assert f"Câu {number}/{total}" in page.text, page.text
        kind = load_questionnaire("sipas-2023").questions[number - 1].kind
        page = await citizen.press(page, {"rating": "4", "yes_no": "Không", "text": "Bỏ qua"}[kind])
    assert "Xin cảm ơn" in page.text and not page.has_form
    answers = (await (await api.get(f"/api/v1/cases/{CODE}")).json())["survey"]["answers"]
    assert len(answers) == total - 1  # all but the skipped comment


REQUIRED_TEXT = Questionnaire(
    id="test-required-text",
    title=MappingProxyType({"vi": "Thử", "en": "Test"}),
    questions=(
        Question(
            id="why",
            kind="text",
            factor=None,
            required=True,
            role=None,
            text=MappingProxyType({"vi": "Vì sao?", "en": "Why?"}),
        ),
    ),
)


async def test_a_required_written_answer_cannot_be_left_empty(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = load_questionnaire

    def questionnaires(questionnaire_id: str) -> Questionnaire:
        return REQUIRED_TEXT if questionnaire_id == REQUIRED_TEXT.id else real(questionnaire_id)

    for module in (survey_answers, web_survey, escalations):
        monkeypatch.setattr(module, "load_questionnaire", questionnaires)
    citizen = await resolved_case(api)
    async with api.services.sessions.begin() as session:
        (await session.execute(select(Survey))).scalar_one().questionnaire = REQUIRED_TEXT.id
    page = await agree(citizen)
    assert "Câu 1/1" in page.text and "Bỏ qua" in page.labels  # a text may always be skipped
    hint = await citizen.send(page.form("Gửi", text="   "))
    assert hint.status == 422 and "Xin Ông/Bà viết câu trả lời" in hint.text
    assert await answer_count(api) == 0
    thanks = await citizen.send(hint.form("Gửi", text="Vì phải chờ lâu"))
    assert "Xin cảm ơn" in thanks.text
    assert await api.scalar(select(Answer.value_text)) == "Vì phải chờ lâu"


# --- the OpenAPI document ---------------------------------------------------------------------


async def test_every_answer_of_the_page_is_documented(api: Api) -> None:
    document = openapi_document()
    citizen = await resolved_case(api)
    seen: list[tuple[str, ClientResponse]] = []

    async def get(path: str) -> None:
        seen.append(("GET", await api.client.get(path)))

    async def post(data: dict[str, str]) -> None:
        seen.append(("POST", await api.client.post(citizen.path, data=data, allow_redirects=False)))

    consent = await citizen.open()
    await get(citizen.path)  # 200
    await get("/s/Unknown")  # 404
    await post({"choice": "agree"})  # 403
    await post(consent.form("Đồng ý"))  # 303
    question = await citizen.open()
    await post(question.form("5", choice="9"))  # 400
    api.clock.advance(timedelta(days=30))
    await get(citizen.path)  # 410
    await post(question.form("5"))  # 410
    assert {(method, r.status) for method, r in seen} >= {
        ("GET", 200),
        ("GET", 404),
        ("GET", 410),
        ("POST", 303),
        ("POST", 400),
        ("POST", 403),
        ("POST", 410),
    }
    for method, response in seen:
        if response.status == 303:  # no body: the status and its Location header
            _, spec = response_spec(document, method, "/s/{token}", 303)
            assert set(spec["headers"]) <= set(response.headers)
            continue
        await assert_documented(document, response, method, "/s/{token}")
