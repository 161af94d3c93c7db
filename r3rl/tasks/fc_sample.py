"""A built-in offline sample of function-calling examples, written in the style of xLAM / APIGen.

Used by `FunctionCallingTask()` when no `path` is given, so demos and tests run
without the hub. It deliberately mixes the formats real data comes in:
xLAM tools and answers as JSON strings (as in xlam-function-calling-60k), xLAM
tools as objects, JSON-schema tools, OpenAI-wrapped tools; single and parallel
calls, the same function called twice, and string, integer, float, boolean,
list and nested-object arguments.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["SAMPLE"]


def _xlam(name: str, description: str, **params: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "description": description, "parameters": params}


def _p(type_: str, description: str, **extra: Any) -> dict[str, Any]:
    return {"type": type_, "description": description, **extra}


def _schema(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"name": name, "description": description,
            "parameters": {"type": "object", "properties": properties, "required": required}}


def _openai(tool: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": tool}


WEATHER = _xlam("get_weather", "Current weather for a city.",
                city=_p("str", "City name, e.g. 'Paris'."),
                unit=_p("str, optional", "'celsius' or 'fahrenheit'.", default="celsius"))
FORECAST = _xlam("get_forecast", "Daily weather forecast.",
                 city=_p("str", "City name."), days=_p("int", "Number of days, 1 to 14.", default=3))
CONVERT = _xlam("convert_currency", "Convert an amount between currencies.",
                amount=_p("float", "Amount to convert."), from_currency=_p("str", "ISO code of the source currency."),
                to_currency=_p("str", "ISO code of the target currency."))
FIBONACCI = _xlam("fibonacci", "The n-th Fibonacci number.", n=_p("int", "Index, starting at 0."))
IS_PRIME = _xlam("is_prime", "Whether a number is prime.", num=_p("int", "The number to test."))
AVERAGE = _xlam("average", "Arithmetic mean of a list of numbers.", numbers=_p("List[float]", "The numbers."))
MERGE = _xlam("merge_dicts", "Merge two dictionaries; keys of the second win.",
              dict1=_p("Dict", "First dictionary."), dict2=_p("Dict", "Second dictionary."))
SORT = _xlam("sort_numbers", "Sort a list of numbers.", numbers=_p("List[float]", "The numbers."),
             descending=_p("bool, optional", "Sort from largest to smallest.", default=False))
PALINDROME = _xlam("is_palindrome", "Whether a string reads the same backwards.", text=_p("str", "The text."))
SEARCH_PRODUCTS = _schema(
    "search_products", "Search an online store's catalogue.",
    {"query": {"type": "string", "description": "Search words."},
     "max_price": {"type": "number", "description": "Highest price in USD."},
     "in_stock": {"type": "boolean", "description": "Only items in stock."},
     "categories": {"type": "array", "items": {"type": "string"}, "description": "Category filters."}},
    ["query"])
BOOK_FLIGHT = _schema(
    "book_flight", "Book a flight for passengers.",
    {"origin": {"type": "string", "description": "IATA code of the departure airport."},
     "destination": {"type": "string", "description": "IATA code of the arrival airport."},
     "date": {"type": "string", "description": "Date, YYYY-MM-DD."},
     "passengers": {"type": "object", "description": "Passenger counts.",
                    "properties": {"adults": {"type": "integer"}, "children": {"type": "integer"}}},
     "cabin": {"type": "string", "enum": ["economy", "business", "first"]}},
    ["origin", "destination", "date", "passengers"])
SEND_EMAIL = _schema(
    "send_email", "Send an email.",
    {"to": {"type": "array", "items": {"type": "string"}, "description": "Recipients."},
     "subject": {"type": "string"}, "body": {"type": "string"},
     "urgent": {"type": "boolean", "description": "Mark as urgent."}},
    ["to", "subject", "body"])
CREATE_EVENT = _schema(
    "create_calendar_event", "Create a calendar event.",
    {"title": {"type": "string"}, "start": {"type": "string", "description": "ISO 8601 date-time."},
     "duration_minutes": {"type": "integer"},
     "attendees": {"type": "array", "items": {"type": "string"}}},
    ["title", "start"])
TRANSLATE = _schema(
    "translate_text", "Translate text into another language.",
    {"text": {"type": "string"}, "target_language": {"type": "string", "description": "ISO 639-1 code."}},
    ["text", "target_language"])


def _row(i: int, query: str, tools: list[dict[str, Any]], answers: list[dict[str, Any]],
         as_json_strings: bool = False) -> dict[str, Any]:
    """One example; `as_json_strings` stores tools and answers the way xlam-function-calling-60k does."""
    if as_json_strings:
        return {"id": i, "query": query, "tools": json.dumps(tools), "answers": json.dumps(answers)}
    return {"id": i, "query": query, "tools": tools, "answers": answers}


def _call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"name": name, "arguments": arguments}


SAMPLE: list[dict[str, Any]] = [
    _row(0, "What's the weather like in Paris right now?", [WEATHER, FORECAST],
         [_call("get_weather", city="Paris")], as_json_strings=True),
    _row(1, "Give me the current temperature in Chicago in fahrenheit.", [WEATHER],
         [_call("get_weather", city="Chicago", unit="fahrenheit")], as_json_strings=True),
    _row(2, "I need the 7-day forecast for Tokyo and the current weather in Osaka.", [WEATHER, FORECAST],
         [_call("get_forecast", city="Tokyo", days=7), _call("get_weather", city="Osaka")], as_json_strings=True),
    _row(3, "How much is 250 US dollars in euros?", [CONVERT, WEATHER],
         [_call("convert_currency", amount=250.0, from_currency="USD", to_currency="EUR")], as_json_strings=True),
    _row(4, "Convert 1200.50 GBP to JPY and 99.99 CHF to USD.", [CONVERT],
         [_call("convert_currency", amount=1200.5, from_currency="GBP", to_currency="JPY"),
          _call("convert_currency", amount=99.99, from_currency="CHF", to_currency="USD")], as_json_strings=True),
    _row(5, "What is the 20th Fibonacci number, and is 97 a prime?", [FIBONACCI, IS_PRIME],
         [_call("fibonacci", n=20), _call("is_prime", num=97)], as_json_strings=True),
    _row(6, "Check whether 221 and 223 are prime numbers.", [IS_PRIME, FIBONACCI],
         [_call("is_prime", num=221), _call("is_prime", num=223)]),
    _row(7, "Find the average of 3.5, 7, 12.25 and 0.", [AVERAGE, SORT],
         [_call("average", numbers=[3.5, 7, 12.25, 0])]),
    _row(8, "Sort these scores from highest to lowest: 88, 92.5, 79, 95.", [SORT, AVERAGE],
         [_call("sort_numbers", numbers=[88, 92.5, 79, 95], descending=True)]),
    _row(9, "Merge {'a': 1, 'b': {'c': 2}} with {'b': {'c': 3}, 'd': [4, 5]}.", [MERGE],
         [_call("merge_dicts", dict1={"a": 1, "b": {"c": 2}}, dict2={"b": {"c": 3}, "d": [4, 5]})]),
    _row(10, "Is 'A man a plan a canal Panama' a palindrome? Also, is 'racecar'?", [PALINDROME],
         [_call("is_palindrome", text="A man a plan a canal Panama"), _call("is_palindrome", text="racecar")]),
    _row(11, "Search the store for wireless headphones under $150 that are in stock.", [SEARCH_PRODUCTS],
         [_call("search_products", query="wireless headphones", max_price=150, in_stock=True)]),
    _row(12, "Look for running shoes in the 'sports' and 'outdoor' categories.", [SEARCH_PRODUCTS, TRANSLATE],
         [_call("search_products", query="running shoes", categories=["sports", "outdoor"])]),
    _row(13, "Book an economy flight from JFK to LHR on 2025-03-14 for 2 adults and 1 child.",
         [_openai(BOOK_FLIGHT)],
         [_call("book_flight", origin="JFK", destination="LHR", date="2025-03-14",
                passengers={"adults": 2, "children": 1}, cabin="economy")]),
    _row(14, "Email ana@example.com and li@example.com with subject 'Standup' and body 'Moved to 10am.' "
             "Mark it urgent.", [_openai(SEND_EMAIL), _openai(CREATE_EVENT)],
         [_call("send_email", to=["ana@example.com", "li@example.com"], subject="Standup",
                body="Moved to 10am.", urgent=True)]),
    _row(15, "Put a 45-minute 'Design review' on my calendar for 2025-06-02T14:00 with sam@example.com.",
         [_openai(CREATE_EVENT), _openai(SEND_EMAIL)],
         [_call("create_calendar_event", title="Design review", start="2025-06-02T14:00", duration_minutes=45,
                attendees=["sam@example.com"])]),
    _row(16, "Translate 'Where is the train station?' into German and into Japanese.", [TRANSLATE],
         [_call("translate_text", text="Where is the train station?", target_language="de"),
          _call("translate_text", text="Where is the train station?", target_language="ja")],
         as_json_strings=True),
    _row(17, "What's the weather in Berlin in celsius, and translate 'good morning' into French.",
         [WEATHER, TRANSLATE],
         [_call("get_weather", city="Berlin", unit="celsius"),
          _call("translate_text", text="good morning", target_language="fr")]),
    _row(18, "Find books about machine learning under $40, then convert 40 USD to INR.",
         [_openai(SEARCH_PRODUCTS), CONVERT],
         [_call("search_products", query="machine learning books", max_price=40),
          _call("convert_currency", amount=40, from_currency="USD", to_currency="INR")]),
    _row(19, "Book a business-class flight SFO to NRT on 2025-11-20 for one adult, no children.",
         [_openai(BOOK_FLIGHT), WEATHER],
         [_call("book_flight", origin="SFO", destination="NRT", date="2025-11-20",
                passengers={"adults": 1, "children": 0}, cabin="business")], as_json_strings=True),
]
