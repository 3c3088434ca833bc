import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.browser


def test_shot(logged_in, stack):
    page = logged_in
    job = stack.create_job(epochs=400)
    page.goto(f"{stack.url}/jobs/{job['id']}")
    expect(page.locator("#job-status")).to_have_text("running", timeout=60_000)
    page.wait_for_timeout(2500)
    page.screenshot(path="/tmp/dash/running.png", full_page=True)
    page.goto(f"{stack.url}/")
    page.wait_for_timeout(2500)
    page.screenshot(path="/tmp/dash/list_running.png", full_page=True)
    with stack.client() as c:
        c.post(f"/v1/jobs/{job['id']}/cancel")
